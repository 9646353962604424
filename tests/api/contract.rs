//! Contract fuzzing: schemathesis generates requests from the service's own
//! `/openapi.json` (examples, coverage, fuzzing and stateful phases, a bounded
//! number of examples) and checks that no answer is a server error or
//! disagrees with the schema (status code, content type, body).

use std::process::Command;

use serde_json::json;

use crate::helpers::*;

fn schemathesis() -> Command {
    let on_path = Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        Command::new("schemathesis")
    } else {
        let mut c = Command::new("python3");
        c.args(["-m", "schemathesis.cli"]);
        c
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let app = spawn_app().await;
    // The id the schema's examples use, so generated claims reach the logic.
    app.create_campaign(json!({"id": "double11-20off", "stock": 1000000}))
        .await;
    let url = app.url("/openapi.json");
    let out = tokio::task::spawn_blocking(move || {
        schemathesis()
            .args(["run", &url])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            ])
            .args(["--max-examples", "30", "--generation-deterministic", "--no-color"])
            .args(["--request-timeout", "5"])
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .expect("schemathesis is installed (scripts/test installs it)")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis failed:\n{text}");
    assert!(text.contains("passed"), "schemathesis ran nothing:\n{text}");
    let tail: Vec<&str> = text.lines().rev().take(3).collect();
    eprintln!("schemathesis: {tail:?}");
    if std::env::var_os("SHOW_SCHEMATHESIS").is_some() {
        eprintln!("{text}");
    }
    app.stop().await;
}
