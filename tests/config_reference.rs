//! docs/configuration.md is what the shipped binary's `gofe reference` prints: the reference is
//! written from the configuration types, so a field added, renamed or documented differently
//! without regenerating the file fails here.

use std::process::Command;

#[test]
fn the_configuration_reference_is_the_binary_s_output() {
    let out = Command::new(env!("CARGO_BIN_EXE_gofe"))
        .arg("reference")
        .output()
        .expect("gofe reference runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).expect("UTF-8");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "docs/configuration.md differs from `gofe reference` from line {}: regenerate it \
             with `cargo run -- reference > docs/configuration.md`\n  file: {:?}\n  gofe: {:?}",
            first + 1,
            committed.lines().nth(first).unwrap_or("<end>"),
            generated.lines().nth(first).unwrap_or("<end>"),
        );
    }
    // It covers the three files, each field of theirs in a table.
    for heading in [
        "## The proxy file",
        "## The xDS bootstrap",
        "## The controller file",
    ] {
        assert!(generated.contains(heading), "{heading}");
    }
    assert!(generated.contains("| `scrape_interval` |"));
}
