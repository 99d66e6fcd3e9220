//! The EC2 Query protocol decoder: form pairs (from a POST body or a GET query string) into a
//! map, and typed getters that follow the wire rules of botocore's `ec2` serializer:
//! lists are `Name.N` (N from 1, no `.member`), structures `Name.N.Field`, filters
//! `Filter.N.Name` / `Filter.N.Value.M`, tags `TagSpecification.N.Tag.M.Key`.
//!
//! Names the EC2 model does not have are refused before an action decodes (`api::model`).
//! Every getter marks the keys it read; `finish` then refuses whatever was left (members of
//! the model the action does not honour) with `UnsupportedOperation` naming it, so nothing a
//! client asks for is silently ignored.

use std::collections::{BTreeMap, BTreeSet};

use super::error::{ApiError, ApiResult};

/// Longest accepted parameter value (EC2's longest free-text fields, user data aside, are
/// far shorter; user data is limited separately).
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Highest list index accepted (`InstanceId.1000`): EC2 caps lists at 1000 entries or fewer.
pub const MAX_LIST_INDEX: u32 = 1000;

#[derive(Debug, Default)]
pub struct Params {
    map: BTreeMap<String, String>,
    used: BTreeSet<String>,
}

/// One `Filter.N` of a Describe call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

/// One `TagSpecification.N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSpec {
    pub resource_type: String,
    pub tags: Vec<(String, String)>,
}

impl Params {
    /// Decodes `application/x-www-form-urlencoded` bytes. Invalid UTF-8 or a repeated key is
    /// a bad request, never a silent choice between two values.
    pub fn parse(raw: &[u8]) -> ApiResult<Params> {
        if std::str::from_utf8(raw).is_err() {
            return Err(ApiError::InvalidRequest("The request is not valid UTF-8 form data".into()));
        }
        let mut map = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(raw) {
            if k.is_empty() {
                continue;
            }
            if k.contains('\u{fffd}') || v.contains('\u{fffd}') {
                return Err(ApiError::InvalidRequest("The request contains an invalid percent-encoding".into()));
            }
            if v.len() > MAX_VALUE_LEN {
                return Err(ApiError::invalid_value(format!(
                    "The value of parameter {k} is longer than {MAX_VALUE_LEN} characters"
                )));
            }
            let k = k.into_owned();
            if map.insert(k.clone(), v.into_owned()).is_some() {
                return Err(ApiError::InvalidParameterCombination(format!(
                    "The parameter {k} is given more than once"
                )));
            }
        }
        Ok(Params { map, used: BTreeSet::new() })
    }

    /// Adds the pairs of `other` (the body, after the query string); a key in both is an error.
    pub fn merge(&mut self, other: Params) -> ApiResult<()> {
        for (k, v) in other.map {
            if self.map.contains_key(&k) {
                return Err(ApiError::InvalidParameterCombination(format!(
                    "The parameter {k} is given more than once"
                )));
            }
            self.map.insert(k, v);
        }
        Ok(())
    }

    /// Builds params from pairs (tests and the query-string path).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Params {
        Params { map: pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(), used: BTreeSet::new() }
    }

    /// Reads a value without marking it (for the pipeline: `Action`, `Version`).
    pub fn peek(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    /// Marks protocol-level keys (action, version, presigned auth) as read.
    pub fn mark_used(&mut self, name: &str) {
        if self.map.contains_key(name) {
            self.used.insert(name.to_owned());
        }
    }

    pub fn str(&mut self, name: &str) -> Option<String> {
        let v = self.map.get(name)?.clone();
        self.used.insert(name.to_owned());
        Some(v)
    }

    pub fn required(&mut self, name: &str) -> ApiResult<String> {
        match self.str(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::MissingParameter(name.to_owned())),
        }
    }

    /// A string with EC2's length bound, e.g. names and descriptions up to 255 characters.
    pub fn str_max(&mut self, name: &str, max: usize) -> ApiResult<Option<String>> {
        match self.str(name) {
            Some(v) if v.chars().count() > max => Err(ApiError::invalid_value(format!(
                "Value for parameter {name} is too long: at most {max} characters"
            ))),
            v => Ok(v),
        }
    }

    pub fn int(&mut self, name: &str) -> ApiResult<Option<i64>> {
        match self.str(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<i64>()
                .map(Some)
                .map_err(|_| ApiError::invalid_value(format!("Invalid value '{v}' for {name}: not an integer"))),
        }
    }

    pub fn bool(&mut self, name: &str) -> ApiResult<Option<bool>> {
        match self.str(name).as_deref() {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid_value(format!("Invalid value '{v}' for {name}: expected true or false"))),
        }
    }

    /// The sorted, distinct indices N of `prefix.N` and `prefix.N.*` keys.
    pub fn indices(&mut self, prefix: &str) -> ApiResult<Vec<u32>> {
        let dotted = format!("{prefix}.");
        let mut out = BTreeSet::new();
        for key in self.map.range(dotted.clone()..) {
            let Some(rest) = key.0.strip_prefix(&dotted) else { break };
            let idx = rest.split('.').next().unwrap_or("");
            match super::model::list_index(idx) {
                Some(Ok(n)) => {
                    out.insert(n);
                }
                Some(Err(e)) => return Err(e),
                // Not an index: it is some other parameter that merely starts the same way
                // (or a malformed one); `finish` reports it if nothing reads it.
                None => {}
            }
        }
        Ok(out.into_iter().collect())
    }

    /// A list of strings `prefix.N`.
    pub fn list(&mut self, prefix: &str) -> ApiResult<Vec<String>> {
        let mut out = Vec::new();
        for n in self.indices(prefix)? {
            if let Some(v) = self.str(&format!("{prefix}.{n}")) {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// `Filter.N.Name` + `Filter.N.Value.M`.
    pub fn filters(&mut self) -> ApiResult<Vec<Filter>> {
        let mut out = Vec::new();
        for n in self.indices("Filter")? {
            let name = self.required(&format!("Filter.{n}.Name"))?;
            let values = self.list(&format!("Filter.{n}.Value"))?;
            out.push(Filter { name, values });
        }
        Ok(out)
    }

    /// `TagSpecification.N` (the wire name of `TagSpecifications`).
    pub fn tag_specs(&mut self) -> ApiResult<Vec<TagSpec>> {
        let mut out = Vec::new();
        for n in self.indices("TagSpecification")? {
            let resource_type = self.required(&format!("TagSpecification.{n}.ResourceType"))?;
            let tags = self.tags(&format!("TagSpecification.{n}.Tag"))?;
            out.push(TagSpec { resource_type, tags });
        }
        Ok(out)
    }

    /// `prefix.N.Key` + `prefix.N.Value` (value optional, as on CreateTags).
    pub fn tags(&mut self, prefix: &str) -> ApiResult<Vec<(String, String)>> {
        let mut out = Vec::new();
        for n in self.indices(prefix)? {
            let key = self.required(&format!("{prefix}.{n}.Key"))?;
            let value = self.str(&format!("{prefix}.{n}.Value")).unwrap_or_default();
            out.push((key, value));
        }
        Ok(out)
    }

    /// Takes every pair under `prefix` (`LaunchTemplateData.`): their keys without it.
    pub fn take_prefixed(&mut self, prefix: &str) -> Vec<(String, String)> {
        let out: Vec<(String, String)> = self
            .map
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k[prefix.len()..].to_owned(), v.clone()))
            .collect();
        for (k, _) in &out {
            self.used.insert(format!("{prefix}{k}"));
        }
        out
    }

    /// Every pair, read or not, sorted by name.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Whether a getter has read `key`.
    pub fn was_read(&self, key: &str) -> bool {
        self.used.contains(key)
    }

    /// The pairs no getter has read yet.
    pub fn unread(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().filter(|(k, _)| !self.used.contains(*k)).map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Ends decoding of `action`: a key that no getter read is a member the action does not
    /// honour (the model check has already refused names the model does not have), refused
    /// with its name and value rather than silently ignored.
    pub fn finish(&self, action: &str) -> ApiResult<()> {
        match self.unread().next() {
            Some((k, v)) => {
                Err(ApiError::UnsupportedOperation(format!("Strato does not support {k}={} with {action}", shorten(v))))
            }
            None => Ok(()),
        }
    }
}

/// A value as an error message quotes it: at most 64 characters.
fn shorten(v: &str) -> String {
    if v.chars().count() <= 64 {
        v.to_owned()
    } else {
        format!("{}...", v.chars().take(64).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_structs_filters_and_tags_decode() {
        let mut p = Params::parse(
            b"Action=X&InstanceId.2=b&InstanceId.1=a&Filter.1.Name=tag%3AName&Filter.1.Value.1=web*\
              &Filter.1.Value.2=db&TagSpecification.1.ResourceType=vpc&TagSpecification.1.Tag.1.Key=k\
              &TagSpecification.1.Tag.1.Value=v",
        )
        .unwrap();
        p.mark_used("Action");
        assert_eq!(p.list("InstanceId").unwrap(), vec!["a", "b"]);
        let f = p.filters().unwrap();
        assert_eq!(f[0].name, "tag:Name");
        assert_eq!(f[0].values, vec!["web*", "db"]);
        let t = p.tag_specs().unwrap();
        assert_eq!(t[0].resource_type, "vpc");
        assert_eq!(t[0].tags, vec![("k".into(), "v".into())]);
        p.finish("X").unwrap();
    }

    #[test]
    fn unread_parameters_are_refused_by_name() {
        let mut p = Params::parse(b"GroupName=a&Bogus=1").unwrap();
        p.str("GroupName");
        let e = p.finish("CreateSecurityGroup").unwrap_err();
        assert_eq!(e.code(), "UnsupportedOperation");
        assert!(e.to_string().contains("Bogus=1"), "{e}");
    }

    #[test]
    fn bad_input_gets_codes() {
        assert_eq!(Params::parse(b"a=1&a=2").unwrap_err().code(), "InvalidParameterCombination");
        assert_eq!(Params::parse(b"a=%FF").unwrap_err().code(), "InvalidRequest");
        assert_eq!(Params::parse(&[0xff, b'=', b'1']).unwrap_err().code(), "InvalidRequest");
        let mut p = Params::parse(b"MaxResults=ten&DryRun=maybe&InstanceId.01=x").unwrap();
        assert_eq!(p.int("MaxResults").unwrap_err().code(), "InvalidParameterValue");
        assert_eq!(p.bool("DryRun").unwrap_err().code(), "InvalidParameterValue");
        assert_eq!(p.list("InstanceId").unwrap_err().code(), "InvalidParameterValue");
        let mut p = Params::parse(b"InstanceId.99999999999999999999=x").unwrap();
        assert_eq!(p.list("InstanceId").unwrap_err().code(), "InvalidParameterValue");
    }

    #[test]
    fn prefix_lookalikes_are_not_list_items() {
        let mut p = Params::parse(b"GroupId.1=sg-1&GroupIds=x").unwrap();
        assert_eq!(p.list("GroupId").unwrap(), vec!["sg-1"]);
        assert_eq!(p.finish("X").unwrap_err().code(), "UnsupportedOperation");
    }

    #[test]
    fn lists_may_start_at_zero() {
        // Libcloud numbers its lists from 0.
        let mut p = Params::parse(b"ResourceId.0=a&ResourceId.1=b&Tag.0.Key=k&Tag.0.Value=v").unwrap();
        assert_eq!(p.list("ResourceId").unwrap(), vec!["a", "b"]);
        assert_eq!(p.tags("Tag").unwrap(), vec![("k".into(), "v".into())]);
        p.finish("CreateTags").unwrap();
    }
}
