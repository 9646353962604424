//! Tests of the file as a whole: the example, sizes, TOML syntax and shape
//! errors with their positions, telling a rules file from a service config,
//! and that no text makes the parser panic.

use proptest::prelude::*;

use super::test_support::{EXAMPLE, err, rule_with};
use super::*;

#[test]
fn the_example_parses_with_every_value() {
    let set = RuleSet::parse(EXAMPLE).unwrap();

    assert_eq!(set.defaults.ipv6_prefix, Some(64));
    let proxies: Vec<String> = set
        .defaults
        .trusted_proxies
        .as_ref()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(proxies, ["127.0.0.1/32", "10.0.0.0/8"]);
    assert_eq!(
        set.shield,
        Some(Shield {
            per_second: 50,
            burst: 100
        })
    );

    assert_eq!(set.rules.len(), 3);
    let burst = set.rule("ip-claim-burst").unwrap();
    assert_eq!(burst.endpoint, Endpoint::Claim);
    assert_eq!(burst.campaign.as_ref().unwrap().as_str(), "double11-*");
    assert_eq!(burst.key, [KeyPart::Ip]);
    assert_eq!(burst.limit, 20);
    assert_eq!(burst.window_ms, 60_000);
    assert_eq!(burst.count, Count::Requests);
    assert_eq!(burst.distinct, None);
    assert_eq!(burst.mode, Mode::Enforce);
    assert_eq!(
        burst.ban,
        Some(BanPolicy {
            after: 3,
            duration_ms: 600_000,
            factor: 2,
            max_ms: Some(86_400_000)
        })
    );
    assert_eq!(burst.line, 9);
    assert_eq!(burst.ban_kinds(), [BanKind::Ip]);

    let farm = set.rule("device-farm").unwrap();
    assert_eq!(farm.endpoint, Endpoint::Claim);
    assert!(farm.campaign.is_none());
    assert_eq!(farm.key, [KeyPart::Device]);
    assert_eq!(farm.distinct, Some(KeyPart::Phone));
    assert_eq!(farm.limit, 3);
    assert_eq!(farm.window_ms, 24 * 3_600_000);
    assert_eq!(farm.count, Count::Requests);
    assert_eq!(farm.mode, Mode::Enforce);
    assert_eq!(farm.ban, None);
    assert_eq!(farm.line, 20);

    let guess = set.rule("code-guessing").unwrap();
    assert_eq!(guess.endpoint, Endpoint::Redeem);
    assert_eq!(guess.key, [KeyPart::Ip]);
    assert_eq!(guess.count, Count::Failures);
    assert_eq!(guess.limit, 10);
    assert_eq!(guess.window_ms, 600_000);
    assert_eq!(
        guess.ban,
        Some(BanPolicy {
            after: 1,
            duration_ms: 3_600_000,
            factor: 1,
            max_ms: None
        })
    );
    assert_eq!(guess.line, 28);

    let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["ip-claim-burst", "device-farm", "code-guessing"]);
    assert!(set.rule("nope").is_none());

    assert_eq!(set.block.phone_patterns(), ["+86170*", "+86171*"]);
    assert_eq!(set.block.ip_nets(), ["203.0.113.0/24"]);
    assert_eq!(set.block.device_patterns(), ["emulator-*"]);
    assert!(!set.block.is_empty());
    assert_eq!(set.allow.ip_nets(), ["192.0.2.10/32"]);
    assert!(set.allow.phone_patterns().is_empty());
    assert!(set.allow.device_patterns().is_empty());

    assert_eq!(set.version.len(), 16);
    assert!(set.version.bytes().all(|b| b.is_ascii_hexdigit()));
    // The hash of the bytes: any edit, even a comment, is a new version.
    let edited = format!("{EXAMPLE}# edited\n");
    assert_ne!(RuleSet::parse(&edited).unwrap().version, set.version);
}

#[test]
fn an_empty_file_is_an_empty_rule_set() {
    let set = RuleSet::parse("").unwrap();
    assert!(set.rules.is_empty());
    assert!(set.shield.is_none());
    assert!(set.block.is_empty() && set.allow.is_empty());
    assert!(set.defaults.ipv6_prefix.is_none() && set.defaults.trusted_proxies.is_none());
    // SHA-256 of no bytes.
    assert_eq!(set.version, "e3b0c44298fc1c14");
}

#[test]
fn a_file_over_one_mib_is_refused() {
    let text = format!("# {}\n", "x".repeat(MAX_FILE_BYTES));
    let e = err(&text);
    assert_eq!(e.line, None);
    assert_eq!(e.message, "the file is larger than 1 MiB");
    assert_eq!(e.render(), "the file is larger than 1 MiB");
}

#[test]
fn render_puts_the_position_first() {
    let e = LimitsError::new(Some(12), Some(9), "limit must be at least 1");
    assert_eq!(e.render(), "line 12, column 9: limit must be at least 1");
    assert_eq!(e.to_string(), e.render());
    assert_eq!(LimitsError::new(Some(3), None, "x").render(), "line 3: x");
}

#[test]
fn toml_syntax_errors_carry_line_and_column_and_a_clean_message() {
    let e = err("[shield]\nper_second = 5\nburst = = 3\n");
    assert_eq!(e.line, Some(3));
    assert!(e.column.is_some());
    assert!(!e.message.contains('\n'), "{e:?}");
    assert!(!e.message.contains("|"), "snippet leaked into {e:?}");

    let e = err("[[rule]]\nname = \"a\nkey = [\"ip\"]\n");
    assert_eq!(e.line, Some(2));

    // Duplicate keys are a TOML error too.
    let e = err("[shield]\nburst = 1\nburst = 2\n");
    assert_eq!(e.line, Some(3));
}

#[test]
fn wrong_types_read_cleanly() {
    let e = err(&rule_with("count = 5"));
    assert_eq!(e.line, Some(6));
    let e = err("[[rule]]\nname = \"r\"\nkey = [\"ip\"]\nlimit = \"x\"\nwindow = \"1m\"\n");
    assert_eq!(e.line, Some(4));
    assert!(!e.message.contains("\"\""), "{e:?}");
    assert!(!e.message.contains("default."), "{e:?}");
}

#[test]
fn unknown_fields_are_errors_everywhere() {
    let e = err(&rule_with("limt = 5"));
    assert_eq!(e.line, Some(6), "{e:?}");
    assert!(
        e.message
            .starts_with("unknown field `limt`, expected one of"),
        "{e:?}"
    );
    assert!(!e.message.contains("\"\""), "{e:?}");

    assert_eq!(err("[shield]\nper_second = 1\nbrust = 2\n").line, Some(3));
    assert_eq!(err("[defaults]\nipv6 = 64\n").line, Some(2));
    assert_eq!(err("\n[block]\nphone = []\n").line, Some(3));
    assert_eq!(err("\n\n[allow]\nip = []\n").line, Some(4));
    assert_eq!(err("rules = []\n").line, Some(1));
    assert_eq!(
        err(&rule_with("ban = { duration = \"1h\", afterr = 2 }")).line,
        Some(6)
    );
}

#[test]
fn missing_required_fields_are_errors() {
    let e = err("\n[[rule]]\nname = \"r\"\nkey = [\"ip\"]\nwindow = \"1m\"\n");
    assert!(e.message.contains("limit"), "{e:?}");
    assert!(e.line.is_some(), "{e:?}");
    let e = err(&rule_with("ban = { after = 2 }"));
    assert!(e.message.contains("duration"), "{e:?}");
}

#[test]
fn duplicate_rule_names_point_at_the_second() {
    let text = "[[rule]]\nname = \"a\"\nkey = [\"ip\"]\nlimit = 1\nwindow = \"1s\"\n\
                [[rule]]\nname = \"a\"\nkey = [\"ip\"]\nlimit = 1\nwindow = \"1s\"\n";
    let e = err(text);
    assert_eq!(e.line, Some(7));
    assert_eq!(e.message, "rule name `a` is used twice (first at line 2)");
}

#[test]
fn the_topmost_error_is_reported() {
    let text = "[block]\nips = [\"nope\"]\n[[rule]]\nname = \"r\"\nkey = [\"ip\"]\nlimit = 0\nwindow = \"1m\"\n";
    assert_eq!(err(text).line, Some(2));
    let text = "[[rule]]\nname = \"r\"\nkey = [\"ip\"]\nlimit = 0\nwindow = \"0m\"\n[block]\nips = [\"nope\"]\n";
    assert_eq!(err(text).line, Some(4));
}

#[test]
fn rules_files_are_told_from_service_configs() {
    assert!(is_rules_file(EXAMPLE));
    assert!(is_rules_file("[shield]\nburst = 0\n"));
    assert!(is_rules_file("[[rule]]\nname = \"x\"\n"));
    assert!(is_rules_file("[allow]\n"));
    assert!(!is_rules_file(
        "listen = \"127.0.0.1:8080\"\nredis_url = \"redis://x\"\n"
    ));
    assert!(!is_rules_file("shield = 5\n"));
    assert!(!is_rules_file(""));
    assert!(!is_rules_file("[[rule]\n"));
}

/// Fragments of real rules files, so generated texts get past the TOML
/// syntax often and exercise the validation, not only the tokenizer.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[[rule]]\n".to_owned()),
        Just("[shield]\n".to_owned()),
        Just("[block]\n".to_owned()),
        Just("[allow]\n".to_owned()),
        Just("[defaults]\n".to_owned()),
        Just("[rule.ban]\n".to_owned()),
        "(name|endpoint|campaign|window|count|distinct|mode|duration|max) = \"[a-z0-9*?\\[\\]{}+-]{0,8}\"\n",
        "(limit|per_second|burst|after|factor|ipv6_prefix) = -?[0-9]{1,20}\n",
        "(key|phones|ips|devices|trusted_proxies) = \\[(\"[a-z0-9.:/+*-]{0,12}\", ){0,3}\\]\n",
        "ban = \\{ duration = \"[0-9]{1,3}[smhdx]\"(, (after|factor) = [0-9]{1,3})? \\}\n",
        any::<String>(),
    ]
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        let _ = RuleSet::parse(&text);
        let _ = is_rules_file(&text);
    }

    #[test]
    fn parse_never_panics_on_near_misses(parts in prop::collection::vec(fragment(), 0..24)) {
        let text = parts.concat();
        match RuleSet::parse(&text) {
            Ok(set) => prop_assert_eq!(set.version.len(), 16),
            Err(e) => {
                prop_assert!(!e.message.is_empty());
                prop_assert!(!e.message.contains('\n'));
                if let Some(line) = e.line {
                    prop_assert!(line >= 1 && line <= text.lines().count().max(1) + 1);
                }
            }
        }
    }
}
