//! Tests of `worker::webhooks`.

use super::*;

#[test]
fn backoff_doubles_from_the_base_up_to_five_minutes() {
    let base = Duration::from_secs(1);
    let waits: Vec<u64> = (1..=10).map(|d| backoff(base, d).as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
    assert_eq!(backoff(base, u64::MAX), MAX_BACKOFF);
    assert_eq!(
        backoff(Duration::from_millis(50), 0),
        Duration::from_millis(50)
    );
}

#[test]
fn consumer_names_are_unique_per_process_and_call() {
    let (a, b) = (consumer_name(), consumer_name());
    assert_ne!(a, b);
    assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
    assert!(a.chars().all(|c| c.is_ascii_graphic()), "{a}");
}

#[test]
fn only_the_scripts_events_are_sent() {
    assert_eq!(known_event("campaign.sold_out"), Some("campaign.sold_out"));
    assert_eq!(known_event("campaign.deleted"), None);
}
