//! Text from a license server or a network error, made safe to show: a leaf
//! below the HTTP client and the answer parsers, so that neither depends on
//! the other for it.

use reqwest::Url;

/// `host[:port]` of a URL, for messages and logs (never the path, query or user).
pub(crate) fn server_name(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// The innermost cause of an error (e.g. "Connection refused (os error 111)").
/// reqwest's own `Display` names the full URL; its sources do not.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    sanitize(&cause.to_string(), 200)
}

/// Makes server-provided text safe to show: control and bidi-format characters
/// become spaces, whitespace runs collapse, and the result is cut at `max_chars`.
pub(crate) fn sanitize(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    let mut count = 0;
    let mut pending_space = false;
    for c in text.chars() {
        let c = if c.is_control() || is_format_char(c) {
            ' '
        } else {
            c
        };
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            if count + 1 >= max_chars {
                out.push('…');
                return out;
            }
            out.push(' ');
            count += 1;
            pending_space = false;
        }
        if count >= max_chars {
            out.push('…');
            return out;
        }
        out.push(c);
        count += 1;
    }
    out
}

/// Invisible characters that can reorder or hide text in a terminal.
pub(crate) fn is_format_char(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn sanitize_strips_controls_and_truncates() {
        assert_eq!(sanitize("  a\n\tb\u{1b}[31m c  ", 100), "a b [31m c");
        assert_eq!(sanitize("evil\u{202E}txt", 100), "evil txt");
        let long = "x".repeat(1000);
        let s = sanitize(&long, 200);
        assert_eq!(s.chars().count(), 201);
        assert!(s.ends_with('…'));
        assert_eq!(sanitize("", 10), "");
    }

    #[test]
    fn server_name_is_host_and_port_only() {
        assert_eq!(server_name(&url("https://a.example/x?y=1")), "a.example");
        assert_eq!(server_name(&url("http://127.0.0.1:99/x")), "127.0.0.1:99");
        assert_eq!(server_name(&url("http://[::1]:99/x")), "[::1]:99");
    }
}
