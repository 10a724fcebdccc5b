//! A tiny HTML builder. Markup is only ever `&'static str` written in this crate's source;
//! everything that comes from data (stream ids, payloads, names, errors) goes through
//! [`escape`], the one escaping function, on its way into the page, whether as text or as an
//! attribute value. There is no way to add a dynamic string to a page unescaped.

use std::fmt::Write as _;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Characters left as they are in a URL query value: ASCII letters, digits and `-._~`.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Writes `text` into `out` with the five characters that mean something in HTML (`&`, `<`,
/// `>`, `"`, `'`) replaced by entities: safe as element text and as a quoted attribute value.
pub(crate) fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// [`escape_into`] a new string.
#[cfg(test)]
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text);
    out
}

/// A link inside the console: a path under its mount point and query parameters, each
/// value percent-encoded (so any stream id, with `/`, `?`, `#`, `%`, `+`, spaces or any
/// unicode, arrives back as it was).
#[derive(Clone, Debug)]
pub(crate) struct Href(String);

impl Href {
    /// `path` (starting with `/`) under the console's mount point `prefix`. The root is the
    /// mount point itself (`/console`, not `/console/`, which a nested router does not route).
    pub(crate) fn new(prefix: &str, path: &str) -> Self {
        if path == "/" && !prefix.is_empty() {
            return Self(prefix.to_owned());
        }
        Self(format!("{prefix}{path}"))
    }

    /// Adds `name=value`, `value` percent-encoded.
    pub(crate) fn param(mut self, name: &'static str, value: impl std::fmt::Display) -> Self {
        let value = value.to_string();
        let sep = if self.0.contains('?') { '&' } else { '?' };
        let _ = write!(
            self.0,
            "{sep}{name}={}",
            utf8_percent_encode(&value, QUERY_VALUE)
        );
        self
    }

    /// Adds a path segment, percent-encoded.
    pub(crate) fn segment(mut self, value: impl std::fmt::Display) -> Self {
        let value = value.to_string();
        let _ = write!(self.0, "/{}", utf8_percent_encode(&value, QUERY_VALUE));
        self
    }

    /// The URL, unescaped (for a `Location` header).
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// An HTML document being written.
#[derive(Default)]
pub(crate) struct Html {
    out: String,
}

impl Html {
    /// Markup written in this crate's source.
    pub(crate) fn raw(&mut self, markup: &'static str) -> &mut Self {
        self.out.push_str(markup);
        self
    }

    /// Text from anywhere, escaped.
    pub(crate) fn text(&mut self, text: impl AsRef<str>) -> &mut Self {
        escape_into(&mut self.out, text.as_ref());
        self
    }

    /// A number, or anything else displayed, escaped all the same.
    pub(crate) fn show(&mut self, value: impl std::fmt::Display) -> &mut Self {
        self.text(value.to_string())
    }

    /// `<tag>text</tag>`; `tag` written in this crate's source.
    pub(crate) fn el(&mut self, tag: &'static str, text: impl AsRef<str>) -> &mut Self {
        self.out.push('<');
        self.out.push_str(tag);
        self.out.push('>');
        self.text(text);
        self.out.push_str("</");
        self.out.push_str(tag.split(' ').next().unwrap_or(tag));
        self.out.push('>');
        self
    }

    /// `<a href="...">text</a>`.
    pub(crate) fn link(&mut self, href: &Href, text: impl AsRef<str>) -> &mut Self {
        self.out.push_str("<a href=\"");
        escape_into(&mut self.out, &href.0);
        self.out.push_str("\">");
        self.text(text);
        self.out.push_str("</a>");
        self
    }

    /// An attribute value (the markup around it written by the caller), escaped.
    pub(crate) fn attr(&mut self, value: impl AsRef<str>) -> &mut Self {
        self.text(value)
    }

    /// `<input type="hidden" name="..." value="...">`.
    pub(crate) fn hidden(&mut self, name: &'static str, value: impl AsRef<str>) -> &mut Self {
        self.out.push_str("<input type=\"hidden\" name=\"");
        self.out.push_str(name);
        self.out.push_str("\" value=\"");
        escape_into(&mut self.out, value.as_ref());
        self.out.push_str("\">");
        self
    }

    /// A table row of cells, each escaped text.
    pub(crate) fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.raw("<tr>");
        for cell in cells {
            self.el("td", cell);
        }
        self.raw("</tr>")
    }

    /// A table header row.
    pub(crate) fn head_row(&mut self, cells: &[&'static str]) -> &mut Self {
        self.raw("<tr>");
        for cell in cells {
            self.raw("<th>").raw(cell).raw("</th>");
        }
        self.raw("</tr>")
    }

    /// Text exactly as it is (stored JSON), in a `<pre>`.
    pub(crate) fn pre(&mut self, text: &str) -> &mut Self {
        self.raw("<pre>").text(text).raw("</pre>")
    }

    /// JSON text, pretty-printed when it parses, in a `<pre>`.
    pub(crate) fn json(&mut self, text: &str) -> &mut Self {
        let pretty = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok());
        self.raw("<pre>");
        self.text(pretty.as_deref().unwrap_or(text));
        self.raw("</pre>")
    }
}

/// A whole page: the console's layout around `body`.
pub(crate) fn page(prefix: &str, title: &str, refresh: bool, body: Html) -> String {
    let mut h = Html::default();
    h.raw("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    if refresh {
        // Progress pages (a rebuild) refresh themselves: no JavaScript needed.
        h.raw("<meta http-equiv=\"refresh\" content=\"5\">");
    }
    h.raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>")
        .text(title)
        .raw(" · es-console</title><style>")
        .raw(STYLE)
        .raw("</style></head><body><nav>");
    for (path, name) in [
        ("/", "Overview"),
        ("/streams", "Streams"),
        ("/log", "Global log"),
        ("/projections", "Projections"),
        ("/sagas", "Sagas"),
    ] {
        h.link(&Href::new(prefix, path), name).raw(" ");
    }
    h.raw("</nav><main><h1>").text(title).raw("</h1>");
    h.out.push_str(&body.out);
    h.raw("</main></body></html>");
    h.out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222}\
nav{background:#234;padding:.6em 1em}nav a{color:#fff;margin-right:1.2em;text-decoration:none}\
main{padding:1em 1.5em}table{border-collapse:collapse;margin:.5em 0 1.2em}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#eef}pre{background:#f6f6f6;padding:.4em;margin:0;max-width:60em;overflow:auto;\
white-space:pre-wrap;word-break:break-all}.bad{color:#a00;font-weight:bold}.ok{color:#070}\
.here{background:#ffd}ul.tree{list-style:none;padding-left:1.2em}form.inline{display:inline}\
.pager a{margin-right:1em}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_markup_character() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn hostile_query_values_are_percent_encoded() {
        let href = Href::new("", "/stream").param("id", "a/b?c#d%e+f g-é");
        assert_eq!(href.as_str(), "/stream?id=a%2Fb%3Fc%23d%25e%2Bf%20g-%C3%A9");
    }
}
