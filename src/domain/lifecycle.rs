//! A campaign's lifecycle: the stored states and the transitions between
//! them. `lua/transition.lua` applies the same table atomically (and appends
//! the audit entry in the same step); this module is the table the service
//! documents, validates actions against and tests.
//!
//! ```text
//! draft --submit--> pending_approval --approve--> active <--pause/resume--> paused
//!   ^                     |                          |                        |
//!   +-------reject--------+                          +----------end-----------+--> ended
//! ```
//! `submit` goes straight to `active` when the campaign needs no approval;
//! `end` is allowed from every state but `ended`. `scheduled` and `sold_out`
//! are not stored: they are what an `active` campaign shows before its start
//! and once its stock is gone.

use std::fmt;

/// A stored lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Draft,
    PendingApproval,
    Active,
    Paused,
    Ended,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Draft => "draft",
            State::PendingApproval => "pending_approval",
            State::Active => "active",
            State::Paused => "paused",
            State::Ended => "ended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "draft" => State::Draft,
            "pending_approval" => State::PendingApproval,
            "active" => State::Active,
            "paused" => State::Paused,
            "ended" => State::Ended,
            _ => return None,
        })
    }

    /// The state a new campaign starts in.
    pub fn initial(draft: bool, require_approval: bool) -> Self {
        match (draft, require_approval) {
            (true, _) => State::Draft,
            (false, true) => State::PendingApproval,
            (false, false) => State::Active,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lifecycle action (`POST /v1/campaigns/{id}/{action}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Submit,
    Approve,
    Reject,
    Pause,
    Resume,
    End,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::Submit,
        Action::Approve,
        Action::Reject,
        Action::Pause,
        Action::Resume,
        Action::End,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Submit => "submit",
            Action::Approve => "approve",
            Action::Reject => "reject",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::End => "end",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The state `self` leads to from `from`, or `None` when it is not allowed.
    pub fn apply(self, from: State, require_approval: bool) -> Option<State> {
        use Action::*;
        use State::*;
        Some(match (self, from) {
            (Submit, Draft) if require_approval => PendingApproval,
            (Submit, Draft) => Active,
            (Approve, PendingApproval) => Active,
            (Reject, PendingApproval) => Draft,
            (Pause, Active) => Paused,
            (Resume, Paused) => Active,
            (End, Draft | PendingApproval | Active | Paused) => Ended,
            _ => return None,
        })
    }

    /// Why `self` is not allowed from `from`, in words for the `409` detail.
    pub fn refusal(self, from: State) -> String {
        let allowed: Vec<&str> = [
            State::Draft,
            State::PendingApproval,
            State::Active,
            State::Paused,
            State::Ended,
        ]
        .into_iter()
        .filter(|s| self.apply(*s, true).is_some() || self.apply(*s, false).is_some())
        .map(State::as_str)
        .collect();
        format!(
            "cannot {} a campaign that is {from}; {} applies only to a campaign that is {}",
            self.as_str(),
            self.as_str(),
            allowed.join(" or ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        use Action::*;
        use State::*;
        assert_eq!(Submit.apply(Draft, true), Some(PendingApproval));
        assert_eq!(Submit.apply(Draft, false), Some(Active));
        assert_eq!(Approve.apply(PendingApproval, true), Some(Active));
        assert_eq!(Reject.apply(PendingApproval, true), Some(Draft));
        assert_eq!(Pause.apply(Active, false), Some(Paused));
        assert_eq!(Resume.apply(Paused, false), Some(Active));
        for s in [Draft, PendingApproval, Active, Paused] {
            assert_eq!(End.apply(s, false), Some(Ended));
        }
        assert_eq!(End.apply(Ended, false), None);
        assert_eq!(Approve.apply(Active, true), None);
        assert_eq!(Resume.apply(Active, true), None);
        assert!(
            Pause
                .refusal(Draft)
                .contains("only to a campaign that is active")
        );
    }

    #[test]
    fn names_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        for s in ["draft", "pending_approval", "active", "paused", "ended"] {
            assert_eq!(State::parse(s).map(State::as_str), Some(s));
        }
        assert_eq!(State::initial(false, true), State::PendingApproval);
    }
}
