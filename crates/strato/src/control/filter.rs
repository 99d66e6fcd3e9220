//! Describe* filters and pagination, the same for every resource.
//!
//! A resource lists the filter names it knows and, for a name, the values it has; the tag
//! filters (`tag:KEY`, `tag-key`, `tag-value`) come for free from its tags. Values match
//! with EC2's wildcards: `*` any run of characters, `?` one character, `\` escapes.
//! Values within one filter are OR'ed, filters are AND'ed.

use base64::Engine;

use crate::api::error::{ApiError, ApiResult};
use crate::api::query::Filter;

use super::model::Tags;

pub trait Filterable {
    /// The filter names this kind of resource accepts, besides the tag filters.
    const FILTERS: &'static [&'static str];
    /// The values of one filter, for this resource (empty when it has none).
    fn filter_values(&self, name: &str) -> Vec<String>;
    fn tags(&self) -> &Tags;
    /// The id that orders the listing and the pagination token.
    fn sort_key(&self) -> &str;
}

/// Rejects filter names the resource does not know, before anything is loaded.
pub fn check_filters<T: Filterable>(filters: &[Filter]) -> ApiResult<()> {
    for f in filters {
        let known = f.name.starts_with("tag:")
            || f.name == "tag-key"
            || f.name == "tag-value"
            || T::FILTERS.contains(&f.name.as_str());
        if !known {
            return Err(ApiError::InvalidFilter(format!("The filter '{}' is invalid", f.name)));
        }
        if f.values.is_empty() {
            return Err(ApiError::InvalidFilter(format!("The filter '{}' has no values", f.name)));
        }
    }
    Ok(())
}

pub fn matches<T: Filterable>(item: &T, filters: &[Filter]) -> bool {
    filters.iter().all(|f| {
        let values: Vec<String> = if let Some(key) = f.name.strip_prefix("tag:") {
            item.tags().iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
        } else if f.name == "tag-key" {
            item.tags().iter().map(|(k, _)| k.clone()).collect()
        } else if f.name == "tag-value" {
            item.tags().iter().map(|(_, v)| v.clone()).collect()
        } else {
            item.filter_values(&f.name)
        };
        f.values.iter().any(|pattern| values.iter().any(|v| wildcard(pattern, v)))
    })
}

/// EC2 wildcard matching: `*`, `?`, and `\` to escape either.
pub fn wildcard(pattern: &str, value: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Lit(char),
        One,
        Any,
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        toks.push(match c {
            '\\' => Tok::Lit(chars.next().unwrap_or('\\')),
            '*' => Tok::Any,
            '?' => Tok::One,
            c => Tok::Lit(c),
        });
    }
    let v: Vec<char> = value.chars().collect();
    // Iterative matcher with backtracking to the last `*`: linear in practice, no recursion.
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < v.len() {
        match toks.get(p) {
            Some(Tok::Lit(c)) if *c == v[i] => {
                p += 1;
                i += 1;
            }
            Some(Tok::One) => {
                p += 1;
                i += 1;
            }
            Some(Tok::Any) => {
                star = Some((p, i));
                p += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    toks[p..].iter().all(|t| *t == Tok::Any)
}

/// The tail every Describe* shares: keep the asked-for ids (failing on the first that is not
/// there), apply the filters, and cut one page.
pub fn select_filter_page<T: Filterable>(
    items: Vec<T>,
    ids: &[String],
    id_of: impl Fn(&T) -> &str,
    missing: impl Fn(&str) -> ApiError,
    filters: &[Filter],
    max: Option<usize>,
    token: Option<&str>,
) -> ApiResult<(Vec<T>, Option<String>)> {
    let items = super::network::select_ids(items, ids, id_of, missing)?;
    paginate(items.into_iter().filter(|i| matches(i, filters)).collect(), max, token)
}

/// `MaxResults` bounds of an action, e.g. 5..=1000.
pub fn check_max_results(max: Option<i64>, lo: i64, hi: i64) -> ApiResult<Option<usize>> {
    match max {
        None => Ok(None),
        Some(n) if (lo..=hi).contains(&n) => Ok(Some(n as usize)),
        Some(n) => Err(ApiError::invalid_value(format!(
            "Value ( {n} ) for parameter maxResults is invalid. Expecting a value between {lo} and {hi}."
        ))),
    }
}

/// Sorts by id and returns one page plus the token for the next, if any. The token is the
/// last id of the page, so pages stay correct while resources come and go.
pub fn paginate<T: Filterable>(
    mut items: Vec<T>,
    max: Option<usize>,
    token: Option<&str>,
) -> ApiResult<(Vec<T>, Option<String>)> {
    items.sort_by(|a, b| a.sort_key().cmp(b.sort_key()));
    if let Some(tok) = token {
        let after = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tok)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("after:").map(str::to_owned))
            .ok_or_else(|| ApiError::InvalidPaginationToken(tok.to_owned()))?;
        items.retain(|i| i.sort_key() > after.as_str());
    }
    let Some(max) = max else { return Ok((items, None)) };
    if items.len() <= max {
        return Ok((items, None));
    }
    items.truncate(max);
    let last = items.last().map(|i| i.sort_key().to_owned()).unwrap_or_default();
    let next = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("after:{last}"));
    Ok((items, Some(next)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("web*", "web-1"));
        assert!(wildcard("*", ""));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("a?c", "ac"));
        assert!(wildcard("*b*d", "abcbd"));
        assert!(!wildcard("web", "web-1"));
        assert!(wildcard("a\\*", "a*"));
        assert!(!wildcard("a\\*", "ab"));
    }

    #[derive(Debug)]
    struct R(String, Tags);
    impl Filterable for R {
        const FILTERS: &'static [&'static str] = &["id"];
        fn filter_values(&self, name: &str) -> Vec<String> {
            if name == "id" {
                vec![self.0.clone()]
            } else {
                vec![]
            }
        }
        fn tags(&self) -> &Tags {
            &self.1
        }
        fn sort_key(&self) -> &str {
            &self.0
        }
    }

    #[test]
    fn filters_and_pages() {
        let items: Vec<R> = (0..7).map(|i| R(format!("r-{i}"), vec![("Name".into(), format!("n{}", i % 2))])).collect();
        let f = vec![Filter { name: "tag:Name".into(), values: vec!["n1".into()] }];
        assert_eq!(items.iter().filter(|r| matches(*r, &f)).count(), 3);
        assert!(check_filters::<R>(&[Filter { name: "bogus".into(), values: vec!["x".into()] }]).is_err());
        let (p1, t1) = paginate(items, Some(5), None).unwrap();
        assert_eq!(p1.len(), 5);
        let items: Vec<R> = (0..7).map(|i| R(format!("r-{i}"), vec![])).collect();
        let (p2, t2) = paginate(items, Some(5), t1.as_deref()).unwrap();
        assert_eq!(p2.len(), 2);
        assert!(t2.is_none());
        let items: Vec<R> = vec![];
        assert_eq!(paginate(items, None, Some("!!")).unwrap_err().code(), "InvalidPaginationToken");
    }
}
