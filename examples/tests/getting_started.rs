//! docs/getting-started.md, followed as a reader follows it: every Rust and TOML block is a
//! whole file, written into a fresh crate as it appears (a later version of a file replaces
//! the earlier one); each version of `src/main.rs` is built and run twice, then `cargo test`
//! runs the cart's tests. The only changes to the pasted text: the path of this clone, and the
//! schema name (one of the test's own, dropped at the end).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The fenced blocks of a Markdown text: (info string, content).
fn blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in markdown.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, text)), None) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// The file a block is, from its first line (`// src/x.rs` or `# Cargo.toml`).
fn file_of(info: &str, text: &str) -> Option<String> {
    let first = text.lines().next()?;
    let path = match info {
        "rust" => first.strip_prefix("// ")?,
        "toml" => first.strip_prefix("# ")?,
        _ => return None,
    };
    Some(path.trim().to_owned())
}

fn cargo(dir: &Path, target: &Path, args: &[&str], schema: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(args)
        .arg("--offline")
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "`cargo {}` failed in the guide's crate (schema {schema}):\n{stdout}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_getting_started_guide_works_when_pasted_twice() {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .unwrap();
    let guide = std::fs::read_to_string(root.join("docs/getting-started.md")).unwrap();
    let target = root.join("target/getting-started");
    // Outside the workspace, as a reader's project is.
    let dir = std::env::temp_dir().join(format!("es-guide-shop-{}", std::process::id()));
    let schema = format!("guide_shop_{}", std::process::id());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    // What `cargo new shop` writes, and the workspace's lock file, so the crate builds with
    // the versions the workspace was tested with, offline.
    std::fs::write(
        dir.join("src/main.rs"),
        "fn main() {\n    println!(\"Hello, world!\");\n}\n",
    )
    .unwrap();
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();

    let mut runs = Vec::new();
    let mut files = 0;
    let all = blocks(&guide);
    for (index, (info, text)) in all.iter().enumerate() {
        if !matches!(info.as_str(), "rust" | "toml") {
            continue;
        }
        let path = file_of(info, text).unwrap_or_else(|| {
            panic!("every Rust and TOML block of the guide is a whole file named on its first line:\n{text}")
        });
        let text = text
            .replace("../eventsourcing-rs/", &format!("{}/", root.display()))
            .replace("\"shop\")", &format!("\"{schema}\")"));
        std::fs::write(dir.join(&path), text).unwrap();
        files += 1;
        if path == "src/main.rs" {
            let first = cargo(&dir, &target, &["run", "--quiet"], &schema);
            let second = cargo(&dir, &target, &["run", "--quiet"], &schema);
            // Where the guide shows the output, it is the output.
            if let Some((_, shown)) = all.get(index + 1).filter(|(info, _)| info == "text") {
                assert_eq!(&first, shown, "the output step {} shows", runs.len() + 1);
            }
            runs.push((first, second));
        }
    }
    assert!(
        files >= 7 && runs.len() == 3,
        "{files} files, {} runs",
        runs.len()
    );
    let tested = cargo(&dir, &target, &["test", "--quiet"], &schema);
    assert!(tested.contains("2 passed"), "{tested}");
    // The projection step counts what every run added: two more units each time.
    let so_far = |out: &str| -> i64 {
        out.rsplit("so far: ")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (first, second) = &runs[2];
    assert!(so_far(first) >= 2, "{first}");
    assert_eq!(so_far(second), so_far(first) + 2, "{first}{second}");

    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&pool)
        .await
        .unwrap();
    });
    let _ = std::fs::remove_dir_all(&dir);
}
