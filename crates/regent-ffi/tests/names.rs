//! The naming table in docs/ARCHITECTURE.md ("Names: one per concept on
//! every surface") is what the C header, the C++ wrapper and the Python
//! binding say: each C, C++ and Python cell's first code span appears in
//! that surface's file as a whole word.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

fn repo(path: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The table's rows, each split into its cells.
fn table() -> Vec<Vec<String>> {
    let doc = repo("docs/ARCHITECTURE.md");
    let start = doc
        .find("### Names: one per concept on every surface")
        .expect("the naming table's heading");
    doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header and the `|---|` line
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

/// The first code span of a cell, without a trailing `()`; `None` for `—`.
fn first_name(cell: &str) -> Option<String> {
    let rest = cell.split_once('`')?.1;
    let span = rest.split_once('`')?.0;
    let span = span.strip_suffix("()").unwrap_or(span);
    // `token(min_valid)`: the parameter is the name.
    let span = match span.split_once('(') {
        Some((_, inner)) => inner.trim_end_matches(')'),
        None => span,
    };
    Some(span.to_owned())
}

fn has_word(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[test]
fn the_naming_table_is_what_the_c_cpp_and_python_surfaces_say() {
    let rows = table();
    assert!(rows.len() >= 10, "the table has {} rows", rows.len());
    let surfaces = [
        (3, "C", repo("bindings/c/include/regent.h")),
        (4, "C++", repo("bindings/cpp/regent.hpp")),
        (5, "Python", repo("bindings/python/regent/__init__.py")),
    ];
    let mut checked = 0;
    for row in &rows {
        assert_eq!(row.len(), 8, "a row of 8 cells: {row:?}");
        for (column, surface, text) in &surfaces {
            let Some(name) = first_name(&row[*column]) else {
                continue;
            };
            assert!(
                has_word(text, &name),
                "{surface} has no `{name}` for \"{}\"",
                row[0]
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} names checked");
}

#[test]
fn a_missing_name_is_noticed() {
    assert!(has_word(
        "const char *regent_token_access_token(void);",
        "regent_token_access_token"
    ));
    assert!(!has_word(
        "regent_token_access_tokens",
        "regent_token_access_token"
    ));
    assert_eq!(
        first_name("`token(min_valid)`").as_deref(),
        Some("min_valid")
    );
    assert_eq!(
        first_name("`access_token()`").as_deref(),
        Some("access_token")
    );
    assert_eq!(first_name("—"), None);
}
