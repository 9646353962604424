//! The rules file in force: reading it, installing a valid edit, refusing
//! an invalid one (the last good rules stay), and the audit trail of both.

use crate::domain::limits::{LimitsError, RuleSet};
use crate::guard::{Guard, Rejected};
use crate::store::rules::AuditEntry;

/// Reads and parses a rules file.
pub fn read_rules(path: &std::path::Path) -> Result<RuleSet, LimitsError> {
    let meta = std::fs::metadata(path).map_err(|e| LimitsError {
        line: None,
        column: None,
        message: format!("cannot read the file: {e}"),
    })?;
    if meta.len() > crate::domain::limits::MAX_FILE_BYTES as u64 {
        return Err(LimitsError {
            line: None,
            column: None,
            message: "the file is larger than 1 MiB".into(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| LimitsError {
        line: None,
        column: None,
        message: format!("cannot read the file: {e}"),
    })?;
    RuleSet::parse(&text)
}

impl Guard {
    /// Puts a new rule set in force (a valid edit of the file), and records
    /// the reload in the audit stream.
    pub async fn install(&self, set: RuleSet) {
        let version = set.version.clone();
        let rules = set.rules.len();
        self.swap_in(set);
        metrics::counter!("stampede_rules_reloads_total", "result" => "ok").increment(1);
        tracing::info!(%version, rules, "rules file reloaded");
        self.audit(
            "rules-file",
            "limits.reload",
            &version,
            "",
            &format!("{rules} rules"),
        )
        .await;
    }

    /// Records an edit of the file that was refused (the last good rules stay).
    pub async fn reject(&self, error: &LimitsError) {
        let file = self
            .file
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_default();
        let message = format!("{file}: {error}");
        metrics::counter!("stampede_rules_reloads_total", "result" => "rejected").increment(1);
        tracing::warn!(
            file = %file,
            line = error.line.unwrap_or(0),
            reason = %error.message,
            "rules file edit rejected; the last good rules stay in force"
        );
        *self.rejected.lock().unwrap_or_else(|p| p.into_inner()) = Some(Rejected {
            at_ms: self.clock.now_ms(),
            error: message.clone(),
        });
        self.audit("rules-file", "limits.reload_rejected", &file, "", &message)
            .await;
    }

    /// Appends to the audit stream; a failure is logged, never fatal.
    pub async fn audit(&self, actor: &str, action: &str, target: &str, reason: &str, detail: &str) {
        let entry = AuditEntry {
            at_ms: self.clock.now_ms(),
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            reason: reason.into(),
            detail: detail.into(),
        };
        if let Err(e) = self.store.audit(&entry).await {
            tracing::warn!(error = %e, action, "audit entry not written");
        }
    }
}
