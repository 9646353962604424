//! Tests of `domain::campaign`.

use super::*;
use time::macros::datetime;

fn req() -> CampaignDraft {
    CampaignDraft {
        name: Some("Double 11".into()),
        stock: Some(100),
        coupon: Some(CouponDraft {
            kind: Some("amount_off".into()),
            amount_off: Some(2000),
            min_order_amount: Some(20000),
            ..CouponDraft::default()
        }),
        ..CampaignDraft::default()
    }
}

#[test]
fn a_minimal_campaign_is_valid_and_starts_now() {
    let now = datetime!(2026-11-11 00:00 UTC);
    let s = CampaignSpec::parse(&req(), "gen-1", now, "t", UrlPolicy::default()).unwrap();
    assert_eq!(s.id, "gen-1");
    assert_eq!(s.starts_at_ms, to_ms(now));
    assert_eq!(s.ends_at_ms, 0);
}

#[test]
fn every_bad_field_is_named() {
    let r = CampaignDraft {
        id: Some("Bad Id".into()),
        stock: Some(-1),
        limits: Some(Limits {
            per_phone: Some(0),
            ..Limits::default()
        }),
        coupon: Some(CouponDraft {
            kind: Some("percent_off".into()),
            percent_off: Some(100),
            amount_off: Some(5),
            ..CouponDraft::default()
        }),
        valid_for_days: Some(0),
        starts_at: Some("yesterday".into()),
        ..CampaignDraft::default()
    };
    let errs = CampaignSpec::parse(
        &r,
        "x",
        datetime!(2026-11-11 00:00 UTC),
        "t",
        UrlPolicy::default(),
    )
    .unwrap_err();
    let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
    for f in [
        "id",
        "name",
        "stock",
        "limits.per_phone",
        "coupon.percent_off",
        "coupon.amount_off",
        "valid_for_days",
        "starts_at",
    ] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
}

#[test]
fn status_follows_window_and_stock() {
    let mut s = CampaignSpec::parse(
        &req(),
        "c",
        datetime!(2026-11-11 00:00 UTC),
        "t",
        UrlPolicy::default(),
    )
    .unwrap();
    s.ends_at_ms = s.starts_at_ms + 1000;
    assert_eq!(
        Status::derive("active", &s, 0, s.starts_at_ms - 1),
        Status::Scheduled
    );
    assert_eq!(
        Status::derive("active", &s, 0, s.starts_at_ms),
        Status::Active
    );
    assert_eq!(
        Status::derive("active", &s, 100, s.starts_at_ms),
        Status::SoldOut
    );
    assert_eq!(Status::derive("active", &s, 0, s.ends_at_ms), Status::Ended);
}

#[test]
fn a_sharded_stock_must_leave_every_serial_a_code_can_carry() {
    use crate::domain::code::MAX_SERIAL;
    assert_eq!(super::stock_over_serials(MAX_SERIAL as i64, 1), None);
    let most = MAX_SERIAL as i64 / 64;
    assert_eq!(super::stock_over_serials(most, 64), None);
    assert!(super::stock_over_serials(most + 1, 64).is_some());
}
