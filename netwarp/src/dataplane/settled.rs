//! What a dataplane last programmed successfully, by plan, so that an
//! ordinary pass skips what did not change. Only a success is recorded: a
//! failure forgets the entry, and the next pass retries against the kernel.

use std::collections::HashMap;

#[derive(Debug)]
pub struct Settled<P> {
    plans: HashMap<String, P>,
}

impl<P> Default for Settled<P> {
    fn default() -> Self {
        Self {
            plans: HashMap::new(),
        }
    }
}

impl<P: PartialEq + Clone> Settled<P> {
    /// Whether `plan` for `id` can be skipped: programmed as it is, and
    /// the pass does not `verify`.
    pub fn unchanged(&self, id: &str, plan: &P, verify: bool) -> bool {
        !verify && self.plans.get(id) == Some(plan)
    }

    /// Records the outcome of programming `plan` for `id`.
    pub fn record<T, E>(&mut self, id: &str, plan: &P, result: &Result<T, E>) {
        match result {
            Ok(_) => {
                self.plans.insert(id.to_owned(), plan.clone());
            }
            Err(_) => {
                self.plans.remove(id);
            }
        }
    }

    pub fn forget(&mut self, id: &str) {
        self.plans.remove(id);
    }

    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.plans.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_success_settles_and_verify_always_programs() {
        let mut settled = Settled::default();
        assert!(!settled.unchanged("a", &1, false), "never programmed");
        settled.record("a", &1, &Ok::<(), ()>(()));
        assert!(settled.unchanged("a", &1, false));
        assert!(!settled.unchanged("a", &1, true), "a verifying pass checks");
        assert!(!settled.unchanged("a", &2, false), "a changed plan");
        settled.record("a", &1, &Err::<(), ()>(()));
        assert!(!settled.unchanged("a", &1, false), "a failure is retried");
    }
}
