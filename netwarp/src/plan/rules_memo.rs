//! Rules labels parsed once by their text. A container's labels do not
//! change while it lives, and every pass plans every target: ten labels
//! of 7,000 prefixes each made parsing alone a large share of each pass.
//! A memo of a pure function, so a plan is the same with it or without.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
};

use crate::model::{Policy, RuleError, parse_policy};

/// Shorter labels are parsed each time: cheaper than the memo's lookup.
const MIN_LEN: usize = 512;
/// The memo's bound, in bytes of label text (128 KiB labels: 256 of them).
const MAX_TEXT: usize = 32 << 20;

static MEMO: LazyLock<Mutex<Memo>> = LazyLock::new(|| Mutex::new(Memo::new(MAX_TEXT)));

/// [`parse_policy`], from the memo for long labels.
pub fn parse(text: &str) -> Result<Policy, RuleError> {
    if text.len() < MIN_LEN {
        return parse_policy(text);
    }
    let memo = || MEMO.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(parsed) = memo().get(text) {
        return parsed;
    }
    // Parsed without the lock: planners on other threads are not held up.
    let parsed = parse_policy(text);
    memo().insert(text, parsed.clone());
    parsed
}

struct Parsed {
    policy: Result<Policy, RuleError>,
    /// Looked up since the last sweep.
    used: bool,
}

struct Memo {
    parsed: HashMap<Box<str>, Parsed, foldhash::fast::RandomState>,
    /// Bytes of label text held.
    text: usize,
    max_text: usize,
}

impl Memo {
    fn new(max_text: usize) -> Self {
        Self {
            parsed: HashMap::default(),
            text: 0,
            max_text,
        }
    }

    fn get(&mut self, text: &str) -> Option<Result<Policy, RuleError>> {
        let parsed = self.parsed.get_mut(text)?;
        parsed.used = true;
        Some(parsed.policy.clone())
    }

    /// Remembers `policy` for `text`. Past the bound, the labels not looked
    /// up since the last sweep go first (those of containers that left),
    /// then all of them.
    fn insert(&mut self, text: &str, policy: Result<Policy, RuleError>) {
        if text.len() > self.max_text {
            return;
        }
        if self.text + text.len() > self.max_text {
            self.parsed
                .retain(|_, parsed| std::mem::take(&mut parsed.used));
            self.text = self.parsed.keys().map(|k| k.len()).sum();
            if self.text + text.len() > self.max_text {
                self.parsed.clear();
                self.text = 0;
            }
        }
        let parsed = Parsed {
            policy,
            used: false,
        };
        if self.parsed.insert(text.into(), parsed).is_none() {
            self.text += text.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 prefixes; labels of single-digit blocks are of equal length.
    fn label(block: u32) -> String {
        (100..200)
            .map(|i| format!("10.202.{block}.{i}/32"))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn a_long_label_parses_as_without_the_memo_and_a_bad_one_fails_alike() {
        let text = label(0);
        assert!(text.len() >= MIN_LEN);
        assert_eq!(parse(&text), parse_policy(&text));
        assert_eq!(parse(&text), parse_policy(&text), "from the memo");
        let bad = format!("{text},nonsense");
        assert!(parse(&bad).is_err());
        assert_eq!(parse(&bad), parse_policy(&bad), "from the memo");
        assert_eq!(parse("192.0.2.0/24"), parse_policy("192.0.2.0/24"));
    }

    #[test]
    fn the_memo_stays_within_its_bound_and_keeps_what_was_used() {
        let texts: Vec<String> = (0..6).map(label).collect();
        let size = texts[0].len();
        let mut memo = Memo::new(size * 3);
        for text in &texts[..3] {
            memo.insert(text, parse_policy(text));
        }
        assert_eq!(memo.parsed.len(), 3);
        assert!(memo.get(&texts[1]).is_some());
        // Over the bound: the unused ones go, the used one stays.
        memo.insert(&texts[3], parse_policy(&texts[3]));
        assert!(memo.text <= size * 3);
        assert!(memo.get(&texts[0]).is_none());
        assert_eq!(memo.get(&texts[1]), Some(parse_policy(&texts[1])));
        assert!(memo.get(&texts[3]).is_some());
        for text in &texts[4..] {
            memo.insert(text, parse_policy(text));
            assert!(memo.text <= size * 3, "{}", memo.text);
        }
        // A text over the whole bound is not kept.
        let mut small = Memo::new(10);
        small.insert(&texts[0], parse_policy(&texts[0]));
        assert!(small.parsed.is_empty());
    }
}
