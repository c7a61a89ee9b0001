//! Keeps secrets that travel in URLs out of what the pipeline prints: userinfo (`user:pass@`)
//! and, for HTTP URLs, query strings and fragments (a presigned URL's signature, a redirect's
//! token). Every log line, error and `stats` value that may hold a URL passes through here.

/// `text` with every URL in it stripped of userinfo, and HTTP URLs of their query and fragment.
pub fn redact_urls(text: &str) -> String {
    let mut output = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.find("://") {
        let scheme_start = rest[..found]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .map_or(0, |index| index + 1);
        let scheme = &rest[scheme_start..found];
        let url_end = rest[found..]
            .find(|c: char| c.is_whitespace() || "\"'<>`()".contains(c))
            .map_or(rest.len(), |end| found + end);
        // Punctuation that ends a sentence (`…?sig=abc: reset`) is not part of the URL.
        let url_end = found
            + 3
            + rest[found + 3..url_end]
                .trim_end_matches([':', ',', ';', '.'])
                .len();
        output.push_str(&rest[..scheme_start]);
        output.push_str(&redact_url(scheme, &rest[found + 3..url_end]));
        rest = &rest[url_end..];
    }
    output.push_str(rest);
    output
}

/// One URL after its scheme's `://`, rebuilt without secrets.
fn redact_url(scheme: &str, after_scheme: &str) -> String {
    let http = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    let authority_end = after_scheme
        .find(|c: char| c == '/' || (http && (c == '?' || c == '#')))
        .unwrap_or(after_scheme.len());
    let (authority, path) = after_scheme.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let path = if http {
        match path.find(['?', '#']) {
            Some(cut) => format!("{}?…", &path[..cut]),
            None => path.to_string(),
        }
    } else {
        path.to_string()
    };
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_http_queries_are_removed() {
        let text = "retrying https://cdn.example/x/y.parquet?X-Amz-Signature=abc&t=1: reset; \
                    from http://user:pw@127.0.0.1:9/a.txt#frag and s3://bucket/a#b?c.txt";
        let redacted = redact_urls(text);
        assert_eq!(
            redacted,
            "retrying https://cdn.example/x/y.parquet?…: reset; from http://127.0.0.1:9/a.txt?… \
             and s3://bucket/a#b?c.txt"
        );
        assert_eq!(redact_urls("no url here"), "no url here");
        assert_eq!(
            redact_urls("(https://u:p@h)"),
            "(https://h)",
            "a URL in parentheses"
        );
    }
}
