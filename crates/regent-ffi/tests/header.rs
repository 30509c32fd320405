//! The committed C header is exactly what the pinned cbindgen generates from
//! this crate (no drift), and it agrees with the error table and `Cargo.toml`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn header_path() -> PathBuf {
    crate_dir().join("../../bindings/c/include/regent.h")
}

fn generate() -> String {
    let dir = crate_dir();
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    // From the source files alone: no `cargo metadata` (which would resolve,
    // and maybe download, every platform's dependencies) in a test.
    let bindings = cbindgen::Builder::new()
        .with_src(dir.join("src/lib.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).unwrap()
}

fn committed(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn the_committed_header_is_what_cbindgen_generates() {
    let fresh = generate();
    let path = header_path();
    if std::env::var_os("REGENT_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let old = committed(&path);
    if old != fresh {
        let line = old
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| old.lines().count().min(fresh.lines().count()));
        panic!(
            "{} is out of date (first difference at line {}); regenerate it with\n    \
             REGENT_BLESS=1 cargo test -p regent-ffi --test header\nand commit the result",
            path.display(),
            line + 1
        );
    }
}

#[test]
fn the_header_enum_is_the_error_table() {
    let header = committed(&header_path());
    let mut expected = vec![("REGENT_OK".to_owned(), 0u32)];
    expected.extend(
        regent_proto::ErrorCode::ALL
            .iter()
            .map(|c| (format!("REGENT_{}", c.name()), u32::from(c.number()))),
    );
    let start = header
        .find("enum regent_result")
        .expect("regent_result in the header");
    let body = &header[start..];
    let body = &body[..body.find("};").unwrap()];
    let found: Vec<(String, u32)> = body
        .lines()
        .filter_map(|l| {
            let (name, value) = l.trim().trim_end_matches(',').split_once(" = ")?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn the_header_version_is_cargo_toml_s() {
    let header = committed(&header_path());
    for (name, value) in [
        (
            "REGENT_VERSION_MAJOR",
            env!("CARGO_PKG_VERSION_MAJOR").to_owned(),
        ),
        (
            "REGENT_VERSION_MINOR",
            env!("CARGO_PKG_VERSION_MINOR").to_owned(),
        ),
        (
            "REGENT_VERSION_PATCH",
            env!("CARGO_PKG_VERSION_PATCH").to_owned(),
        ),
        (
            "REGENT_VERSION",
            format!("\"{}\"", env!("CARGO_PKG_VERSION")),
        ),
    ] {
        let line = format!("#define {name} {value}");
        assert!(header.contains(&line), "regent.h lacks `{line}`");
    }
}

/// Every exported function sits behind the panic boundary and is declared in
/// the header (what the built library exports is checked with `nm` in
/// `tests/tests/ffi.rs`).
#[test]
fn every_exported_function_is_declared_and_behind_the_boundary() {
    let header = committed(&header_path());
    let src = crate_dir().join("src");
    let mut exported = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let starts = text
            .match_indices("\n#[unsafe(no_mangle)]\n")
            .map(|(at, _)| at + 1);
        for start in starts {
            let rest = &text[start..];
            let name_start = rest.find("fn ").unwrap() + 3;
            let name: String = rest[name_start..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let body = &rest[rest.find('{').unwrap() + 1..];
            assert!(
                body.trim_start()
                    .starts_with(&format!("ffi_boundary!(\"{name}\"")),
                "{name} does not start with ffi_boundary!(\"{name}\", …)"
            );
            exported.push(name);
        }
    }
    assert!(exported.len() > 20, "{exported:?}");
    for name in &exported {
        let declared = header.match_indices(&format!("{name}(")).any(|(at, _)| {
            header[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c == ' ' || c == '*')
        });
        assert!(declared, "{name} is not declared in regent.h");
    }
}
