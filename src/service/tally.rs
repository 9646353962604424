//! Refusals decided in process (the block list, a ban), counted per
//! campaign and added to its statistics once a second
//! (`ClaimService::flush_remembered`), so a flood of blocked claims costs no
//! Redis call per request. Campaigns this instance holds are always counted;
//! at most [`MAX_CAMPAIGNS`] others between two flushes (a flood of made-up
//! ids cannot grow it further, nor crowd the real ones out), and
//! a flush writes only the campaigns that exist (those in the catalog's
//! memory, and at most 16 looked up in the store a flush).

use std::collections::HashMap;
use std::sync::Mutex;

/// Distinct campaigns counted between two flushes.
pub const MAX_CAMPAIGNS: usize = 4096;

#[derive(Debug, Default)]
pub struct Tally(Mutex<HashMap<(String, &'static str), u64>>);

impl Tally {
    /// One more refusal of `field` (a stats field, e.g. `rej:blocked`) on
    /// campaign `id`. A campaign the caller knows exists (`known`) is
    /// always counted; others only while fewer than [`MAX_CAMPAIGNS`] are
    /// tallied, so a flood of made-up ids cannot crowd out real ones.
    pub fn add(&self, id: &str, field: &'static str, known: bool) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&(id.to_owned(), field)) {
            *n += 1;
        } else if known || m.len() < MAX_CAMPAIGNS {
            m.insert((id.to_owned(), field), 1);
        }
    }

    /// Everything counted since the last call.
    pub fn take(&self) -> Vec<(String, &'static str, u64)> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.drain().map(|((id, field), n)| (id, field, n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_until_taken_and_bounds_the_campaigns() {
        let t = Tally::default();
        t.add("a", "rej:blocked", false);
        t.add("a", "rej:blocked", false);
        t.add("b", "rej:blocked", false);
        let mut got = t.take();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("a".into(), "rej:blocked", 2),
                ("b".into(), "rej:blocked", 1)
            ]
        );
        assert!(t.take().is_empty());
        for i in 0..MAX_CAMPAIGNS + 10 {
            t.add(&format!("c{i}"), "rej:blocked", false);
        }
        t.add("real", "rej:blocked", true);
        let got = t.take();
        assert_eq!(got.len(), MAX_CAMPAIGNS + 1);
        assert!(got.contains(&("real".into(), "rej:blocked", 1)));
    }
}
