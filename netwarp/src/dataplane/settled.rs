//! What a dataplane last programmed successfully, by plan, so that an
//! ordinary pass skips what did not change. A plan settles when checking
//! it against the kernel found nothing to change: a write is confirmed by
//! the next pass (which repairs what raced with it, such as a container's
//! interface still being set up), and a failure is retried.

use crate::model::IdMap;

#[derive(Debug)]
pub struct Settled<P> {
    plans: IdMap<P>,
}

impl<P> Default for Settled<P> {
    fn default() -> Self {
        Self {
            plans: IdMap::default(),
        }
    }
}

impl<P: PartialEq + Clone> Settled<P> {
    /// Whether `plan` for `id` can be skipped: programmed as it is, and
    /// the pass does not `verify`.
    pub fn unchanged(&self, id: &str, plan: &P, verify: bool) -> bool {
        !verify && self.plans.get(id) == Some(plan)
    }

    /// Records the outcome of programming `plan` for `id`: `Ok(false)`
    /// (nothing needed changing) settles it; a change or a failure leaves
    /// it to be checked again on the next pass.
    pub fn record<E>(&mut self, id: &str, plan: &P, result: &Result<bool, E>) {
        match result {
            // The id is copied only for a plan not held yet.
            Ok(false) => match self.plans.get_mut(id) {
                Some(held) => *held = plan.clone(),
                None => {
                    self.plans.insert(id.to_owned(), plan.clone());
                }
            },
            Ok(true) | Err(_) => {
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
        settled.record("a", &1, &Ok::<_, ()>(true));
        assert!(!settled.unchanged("a", &1, false), "a write is confirmed");
        settled.record("a", &1, &Ok::<_, ()>(false));
        assert!(settled.unchanged("a", &1, false));
        assert!(!settled.unchanged("a", &1, true), "a verifying pass checks");
        assert!(!settled.unchanged("a", &2, false), "a changed plan");
        settled.record("a", &1, &Err::<bool, ()>(()));
        assert!(!settled.unchanged("a", &1, false), "a failure is retried");
    }
}
