//! The warp name pattern: a glob with `*` (any run of characters) and `?`
//! (any one character). Matching is on the whole name.

/// True when `name` matches `pattern`.
pub fn matches(pattern: &str, name: &str) -> bool {
    // Bytes are characters in ASCII, the usual case: no allocation. `?`
    // matches one character, so anything else goes through `char`s.
    if pattern.is_ascii() && name.is_ascii() {
        return matches_units(pattern.as_bytes(), name.as_bytes(), b'*', b'?');
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    matches_units(&p, &n, '*', '?')
}

fn matches_units<T: Copy + PartialEq>(p: &[T], n: &[T], star_unit: T, any: T) -> bool {
    // Iterative matcher with one backtrack point for the last `*`: linear in
    // practice and immune to pathological patterns.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(c) if *c == star_unit => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(c) if *c == any || *c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == star_unit)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn matches_like_a_shell_glob() {
        assert!(matches("warp-*", "warp-vpn"));
        assert!(matches("warp-*", "warp-"));
        assert!(!matches("warp-*", "my-warp-vpn"));
        assert!(matches("*-gw", "wireguard-gw"));
        assert!(matches("w?rp", "warp"));
        assert!(!matches("w?rp", "wrp"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
        // `?` is one character, not one byte.
        assert!(matches("w?rp-*", "wärp-vpn"));
        assert!(!matches("w??rp", "wärp"));
        assert!(matches("*-ü", "gw-ü"));
    }
}
