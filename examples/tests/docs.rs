//! Every guide is compiled as doctests: `src/lib.rs` must include each file of `docs/`.

#![allow(clippy::unwrap_used)]

#[test]
fn every_guide_is_included_as_doctests() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    // Guides whose code needs a crate the examples do not build are doctests of that crate.
    let lib = ["examples", "es-relay"]
        .map(|c| std::fs::read_to_string(format!("{root}/{c}/src/lib.rs")).unwrap())
        .join("\n");
    let mut guides: Vec<String> = std::fs::read_dir(format!("{root}/docs"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        // getting-started.md is pasted into a crate of its own by tests/getting_started.rs.
        .filter(|name| name.ends_with(".md") && name != "README.md" && name != "getting-started.md")
        .collect();
    guides.sort();
    assert!(guides.len() >= 8, "{guides:?}");
    for guide in guides {
        assert!(
            lib.contains(&format!("include_str!(\"../../docs/{guide}\")")),
            "docs/{guide} is not included as doctests in examples/src/lib.rs (or es-relay's)"
        );
    }
}
