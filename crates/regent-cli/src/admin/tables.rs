//! Output for people: aligned tables of registration and auth tokens.

use super::*;

pub(super) fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

pub(super) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let mut text = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(c);
            } else {
                text.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
    out
}

pub(super) fn registration_table(records: &[Value]) -> String {
    if records.is_empty() {
        return "no registration tokens\n".to_owned();
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                cell(&r["id"]),
                cell(&r["state"]),
                format!("{}/{}", cell(&r["usedCount"]), cell(&r["count"])),
                cell(&r["expiryDate"]),
                cell(&r["creationDate"]),
                cell(&r["refId1"]),
                cell(&r["refId2"]),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATE",
            "USED/COUNT",
            "EXPIRES",
            "CREATED",
            "REF1",
            "REF2",
        ],
        &rows,
    )
}

pub(super) fn auth_table(records: &[Value]) -> String {
    if records.is_empty() {
        return "no auth tokens\n".to_owned();
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                cell(&r["id"]),
                cell(&r["identifier"]),
                cell(&r["fqdn"]),
                cell(&r["systemUserName"]),
                cell(&r["macAddress"]),
                cell(&r["creationDate"]),
                cell(&r["lastRefreshDate"]),
                cell(&r["registrationTokenId"]),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "IDENTIFIER",
            "HOST",
            "USER",
            "MAC",
            "CREATED",
            "LAST USE",
            "REGISTRATION TOKEN",
        ],
        &rows,
    )
}
