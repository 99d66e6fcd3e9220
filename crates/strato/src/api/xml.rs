//! A small writer for EC2's XML answers. Element names come from botocore's output shapes
//! (`locationName`), lists are `<name><item>...</item></name>`; text is escaped here and
//! nowhere else.

use std::fmt::{Display, Write};

pub const NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

pub struct Xml {
    buf: String,
}

impl Xml {
    /// Starts `<{Action}Response xmlns=...><requestId>..</requestId>`.
    pub fn response(action: &str, request_id: &str) -> Xml {
        let mut buf = String::with_capacity(1024);
        buf.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<");
        buf.push_str(action);
        buf.push_str("Response xmlns=\"");
        buf.push_str(NAMESPACE);
        buf.push_str("\">");
        let mut x = Xml { buf };
        x.field("requestId", request_id);
        x
    }

    /// Ends the document started by `response`.
    pub fn finish(mut self, action: &str) -> String {
        self.buf.push_str("</");
        self.buf.push_str(action);
        self.buf.push_str("Response>");
        self.buf
    }

    /// Starts a document of another Query service: `<{root} xmlns="{namespace}">` (close it
    /// with `close(root)`).
    pub fn document(root: &str, namespace: &str) -> Xml {
        let mut buf = String::with_capacity(512);
        buf.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<");
        buf.push_str(root);
        buf.push_str(" xmlns=\"");
        buf.push_str(namespace);
        buf.push_str("\">");
        Xml { buf }
    }

    /// An empty writer, for fragments (errors, tests).
    pub fn fragment() -> Xml {
        Xml { buf: String::new() }
    }

    pub fn into_string(self) -> String {
        self.buf
    }

    pub fn open(&mut self, tag: &str) -> &mut Self {
        self.buf.push('<');
        self.buf.push_str(tag);
        self.buf.push('>');
        self
    }

    pub fn close(&mut self, tag: &str) -> &mut Self {
        self.buf.push_str("</");
        self.buf.push_str(tag);
        self.buf.push('>');
        self
    }

    /// `<tag>value</tag>` with the value escaped.
    pub fn field(&mut self, tag: &str, value: impl Display) -> &mut Self {
        self.open(tag);
        let start = self.buf.len();
        // Writing to a String cannot fail.
        let _ = write!(self.buf, "{value}");
        if self.buf[start..].bytes().any(|b| matches!(b, b'<' | b'>' | b'&' | b'"' | b'\'')) {
            let escaped = quick_xml::escape::escape(&self.buf[start..]).into_owned();
            self.buf.truncate(start);
            self.buf.push_str(&escaped);
        }
        self.close(tag)
    }

    /// Escaped text inside the current element (list items of plain strings).
    pub fn text(&mut self, value: &str) -> &mut Self {
        self.buf.push_str(&quick_xml::escape::escape(value));
        self
    }

    pub fn opt_field<T: Display>(&mut self, tag: &str, value: Option<T>) -> &mut Self {
        if let Some(v) = value {
            self.field(tag, v);
        }
        self
    }

    /// `<tag><item>..</item>...</tag>`, each item written by `f`.
    pub fn list<T>(
        &mut self,
        tag: &str,
        items: impl IntoIterator<Item = T>,
        mut f: impl FnMut(&mut Xml, T),
    ) -> &mut Self {
        self.open(tag);
        for item in items {
            self.open("item");
            f(self, item);
            self.close("item");
        }
        self.close(tag)
    }

    /// `<tagSet>` of key/value pairs.
    /// A resource's `tagSet`, left out when it has no tags (as EC2 does: clients then see
    /// no `Tags` at all rather than an empty list).
    pub fn tags<'a>(&mut self, tags: impl IntoIterator<Item = &'a (String, String)>) -> &mut Self {
        let mut tags = tags.into_iter().peekable();
        if tags.peek().is_none() {
            return self;
        }
        self.list("tagSet", tags, |x, (k, v)| {
            x.field("key", k).field("value", v);
        })
    }
}

/// The EC2 error document: `<Response><Errors><Error>..</Error></Errors><RequestID>`.
pub fn error_document(code: &str, message: &str, request_id: &str) -> String {
    let mut x = Xml::fragment();
    x.buf.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.open("Response").open("Errors").open("Error");
    x.field("Code", code).field("Message", message);
    x.close("Error").close("Errors");
    x.field("RequestID", request_id).close("Response");
    x.into_string()
}

/// The text of an XML field as written by `Xml::field` (the five predefined entities).
pub fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        let mut x = Xml::fragment();
        x.field("a", "<b>&\"c\"");
        assert_eq!(x.into_string(), "<a>&lt;b&gt;&amp;&quot;c&quot;</a>");
    }

    #[test]
    fn error_document_has_the_ec2_shape() {
        let d = error_document("AuthFailure", "no", "r1");
        assert!(d.ends_with(
            "<Response><Errors><Error><Code>AuthFailure</Code><Message>no</Message></Error></Errors><RequestID>r1</RequestID></Response>"
        ));
    }
}
