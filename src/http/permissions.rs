//! Who may do what: one table from an action to the roles allowed it,
//! checked by every handler through [`Caller::require`]. `viewer` is the
//! read-only role for dashboards: campaigns, stats, audit, the rules in
//! force and the bans.

use crate::error::ApiError;
use crate::http::auth::Caller;
use crate::settings::Role;

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Create, PATCH, lifecycle actions, bulk codes.
    ManageCampaigns,
    /// Read campaigns and their stats.
    ReadCampaigns,
    /// Claim, redeem, roll back, validate.
    UseCoupons,
    /// The audit trail.
    ReadAudit,
    /// The rules in force and the bans.
    ReadLimits,
    /// Ban and release.
    ManageBans,
}

/// The table.
pub fn roles(p: Permission) -> &'static [Role] {
    use Permission::*;
    use Role::*;
    match p {
        ManageCampaigns | ManageBans => &[Admin],
        ReadCampaigns | ReadAudit | ReadLimits => &[Admin, Viewer],
        UseCoupons => &[Admin, Client],
    }
}

impl Caller {
    /// `403 forbidden` unless the caller's role may do `p`.
    pub fn require(&self, p: Permission) -> Result<(), ApiError> {
        if roles(p).contains(&self.role) {
            Ok(())
        } else {
            let allowed: Vec<&str> = roles(p).iter().map(|r| r.as_str()).collect();
            Err(ApiError::Forbidden(format!(
                "the {} role may not do this (it takes {})",
                self.role.as_str(),
                allowed.join(" or ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_read_clients_use_admins_do_everything() {
        use Permission::*;
        for p in [
            ManageCampaigns,
            ReadCampaigns,
            UseCoupons,
            ReadAudit,
            ReadLimits,
            ManageBans,
        ] {
            assert!(roles(p).contains(&Role::Admin), "{p:?}");
        }
        assert!(roles(ReadAudit).contains(&Role::Viewer));
        assert!(!roles(UseCoupons).contains(&Role::Viewer));
        assert!(!roles(ManageCampaigns).contains(&Role::Client));
        assert!(!roles(ReadCampaigns).contains(&Role::Client));
    }
}
