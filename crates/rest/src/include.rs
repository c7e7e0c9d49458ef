//! `_include` and `_revinclude` (R4 §3.1.1.5.4): the resources a page of
//! matches refers to, or that refer to it, added to the searchset as
//! `search.mode = include`; with `:iterate`, also what those refer to (or
//! what refers to them), round after round to a fixed point. Each one is
//! shown only if the caller may read it directly (`AuthService::authorize`
//! on `GET /fhir/{type}/{id}`), and a page carries at most `MAX_INCLUDED`
//! of them, found in at most `MAX_ITERATE_ROUNDS` rounds (docs/search.md).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use fhirbox_auth::access::RequestFacts;
use fhirbox_auth::Identity;
use fhirbox_fhir::search::{index_values, IndexValue, ParamType, SearchParams};
use fhirbox_store::{Condition, Filter, ResourceSearch, SearchQuery, StoredResource};

use crate::error::RestError;
use crate::Rest;

/// Most resources `_include` and `_revinclude` add to one page together.
pub const MAX_INCLUDED: usize = 1000;
/// Most rounds `:iterate` runs after the first (each one includes from
/// what the round before added).
pub const MAX_ITERATE_ROUNDS: usize = 8;

/// One `_include` (`reverse: false`) or `_revinclude` (`reverse: true`):
/// the references of `source` resources held in `param`, to `target` only
/// when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub reverse: bool,
    /// `None`: any type (`_include=*`).
    pub source: Option<String>,
    /// `None`: every reference parameter of the source (`Type:*`, `*`).
    pub param: Option<String>,
    pub target: Option<String>,
    /// `:iterate`: also from the resources includes added.
    pub iterate: bool,
}

impl Include {
    /// Reads `Source:param[:Target]`, for a search of `searched` types
    /// (empty: any type).
    pub fn parse(name: &str, value: &str, searched: &[&str]) -> Result<Include, RestError> {
        let (reverse, iterate) = match name {
            "_include" => (false, false),
            "_revinclude" => (true, false),
            // `:recurse` is R3's name for `:iterate`.
            "_include:iterate" | "_include:recurse" => (false, true),
            "_revinclude:iterate" | "_revinclude:recurse" => (true, true),
            other => {
                return Err(RestError::bad_request(format!(
                    "{other} is not a form of _include this server knows; use _include, _revinclude, or either with :iterate"
                )))
            }
        };
        let bad = |why: String| RestError::bad_request(format!("{name}={value}: {why}"));
        let parts: Vec<&str> = value.split(':').collect();
        let (source, code, target) = match parts.as_slice() {
            ["*"] if !reverse => {
                return Ok(Include {
                    reverse,
                    source: None,
                    param: None,
                    target: None,
                    iterate,
                })
            }
            [s, p] => (*s, *p, None),
            [s, p, t] => (*s, *p, Some(*t)),
            _ => {
                return Err(bad(
                    "use Type:parameter, Type:parameter:TargetType or Type:* (and _include=* for every reference of the matches)".into(),
                ))
            }
        };
        let fits = |t: &str| searched.is_empty() || searched.contains(&t);
        if code == "*" {
            if reverse {
                return Err(bad(
                    "a wildcard _revinclude is not supported; name the parameter that refers to the matches".into(),
                ));
            }
            if !fhirbox_fhir::is_known_resource_type(source) {
                return Err(bad(format!("{source:?} is not a resource type")));
            }
            if !fits(source) && !iterate {
                return Err(bad(format!(
                    "the search does not return {source} resources, so it has none to include from"
                )));
            }
            return Ok(Include {
                reverse,
                source: Some(source.to_owned()),
                param: None,
                target: target.map(str::to_owned),
                iterate,
            });
        }
        let param = SearchParams::r4()
            .get(source, code)
            .filter(|p| p.param_type == ParamType::Reference)
            .ok_or_else(|| {
                bad(format!(
                    "{source} has no reference search parameter {code:?}"
                ))
            })?;
        if let Some(t) = target {
            if !param.targets.iter().any(|x| x == t) {
                return Err(bad(format!(
                    "{source}.{code} does not refer to {t}; it refers to {}",
                    param.targets.join(", ")
                )));
            }
        }
        // An iterated include may start from what other includes add.
        if !reverse && !fits(source) && !iterate {
            return Err(bad(format!(
                "the search does not return {source} resources, so it has none to include from"
            )));
        }
        if reverse
            && !iterate
            && !param
                .targets
                .iter()
                .any(|t| fits(t) && target.is_none_or(|x| x == t))
        {
            return Err(bad(format!(
                "{source}.{code} does not refer to the resources this search returns"
            )));
        }
        Ok(Include {
            reverse,
            source: Some(source.to_owned()),
            param: Some(code.to_owned()),
            target: target.map(str::to_owned),
            iterate,
        })
    }

    fn from(&self, resource_type: &str) -> bool {
        self.source.as_deref().is_none_or(|s| s == resource_type)
    }

    fn targets(&self, resource_type: &str) -> bool {
        self.target.as_deref().is_none_or(|t| t == resource_type)
    }
}

/// What the includes of a page added.
#[derive(Debug, Default)]
pub struct Included {
    pub resources: Vec<StoredResource>,
    /// Found but not shown: the caller may not read them.
    pub withheld: usize,
    /// More were found than `MAX_INCLUDED` lets a page carry, or
    /// `:iterate` had more to find after `MAX_ITERATE_ROUNDS` rounds.
    pub truncated: bool,
}

impl Rest {
    /// The resources `includes` add to `page`, each once, none of the
    /// page's own, each authorized as a read for `identity`.
    pub(crate) async fn included(
        &self,
        identity: &Identity,
        page: &[StoredResource],
        includes: &[Include],
    ) -> Result<Included, RestError> {
        let mut seen: HashSet<(String, String)> = page
            .iter()
            .map(|r| (r.resource_type.clone(), r.id.clone()))
            .collect();
        let mut out = Included::default();
        // Round 0 includes from the matches; each later round runs the
        // `:iterate` includes from what the round before added (only what
        // the caller may read: a withheld resource leads nowhere).
        let mut from: Vec<StoredResource> = page.to_vec();
        for round in 0..=MAX_ITERATE_ROUNDS {
            let added_before = out.resources.len();
            for include in includes.iter().filter(|i| round == 0 || i.iterate) {
                for query in queries(include, &from) {
                    let room = MAX_INCLUDED.saturating_sub(out.resources.len() + out.withheld);
                    if room == 0 {
                        out.truncated = true;
                        return Ok(out);
                    }
                    let found = self
                        .store
                        .search(SearchQuery {
                            count: u32::try_from(room).unwrap_or(u32::MAX),
                            ..query
                        })
                        .await?;
                    out.truncated |= found.next.is_some();
                    for r in found.resources {
                        if !seen.insert((r.resource_type.clone(), r.id.clone())) {
                            continue;
                        }
                        let facts = RequestFacts::new(
                            "GET",
                            Some(&r.resource_type),
                            Some(&r.id),
                            None,
                            None,
                            Vec::new(),
                        );
                        if self.auth.authorize(identity, &facts).is_ok() {
                            out.resources.push(r);
                        } else {
                            out.withheld += 1;
                        }
                    }
                }
            }
            from = out.resources[added_before..].to_vec();
            if from.is_empty() || !includes.iter().any(|i| i.iterate) {
                return Ok(out);
            }
        }
        // Iterated includes still had resources to follow.
        out.truncated = true;
        Ok(out)
    }
}

/// The store searches that find what `include` adds to `page`: for
/// `_include`, the referenced resources by id, one search per type; for
/// `_revinclude`, the `source` resources whose `param` refers to a
/// resource of the page.
fn queries(include: &Include, page: &[StoredResource]) -> Vec<SearchQuery> {
    let table = SearchParams::r4();
    if include.reverse {
        // A `_revinclude` always names its source and parameter (`parse`).
        let (Some(source), Some(param)) = (&include.source, &include.param) else {
            return Vec::new();
        };
        let refers_to: Vec<&str> = table
            .get(source, param)
            .map(|p| p.targets.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let any_of: Vec<Condition> = page
            .iter()
            .filter(|r| include.targets(&r.resource_type))
            .filter(|r| refers_to.contains(&r.resource_type.as_str()))
            .map(|r| Condition::Reference {
                param: param.clone(),
                target_type: Some(r.resource_type.clone()),
                target_id: r.id.clone(),
            })
            .collect();
        if any_of.is_empty() {
            return Vec::new();
        }
        return vec![SearchQuery {
            resource_type: Some(source.clone()),
            filters: vec![Filter { any_of }],
            ..SearchQuery::default()
        }];
    }
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in page.iter().filter(|r| include.from(&r.resource_type)) {
        let params: Vec<&std::sync::Arc<fhirbox_fhir::search::SearchParam>> = match &include.param {
            Some(code) => table.get(&r.resource_type, code).into_iter().collect(),
            None => table
                .of_type(&r.resource_type)
                .filter(|p| p.param_type == ParamType::Reference)
                .collect(),
        };
        if params.is_empty() {
            continue;
        }
        let Ok(body) = serde_json::from_str(&r.body) else {
            continue;
        };
        for param in params {
            for value in index_values(param, &body) {
                if let IndexValue::Reference {
                    target_type: Some(t),
                    id: Some(id),
                    ..
                } = value
                {
                    if include.targets(&t) && fhirbox_fhir::is_known_resource_type(&t) {
                        ids.entry(t).or_default().insert(id);
                    }
                }
            }
        }
    }
    ids.into_iter()
        .map(|(t, ids)| SearchQuery {
            resource_type: Some(t),
            ids: Some(ids.into_iter().collect()),
            ..SearchQuery::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, value: &str, searched: &[&str]) -> Result<Include, String> {
        Include::parse(name, value, searched).map_err(|e| e.message)
    }

    #[test]
    fn includes_name_a_reference_parameter_the_search_can_use() {
        let inc = parse("_include", "Observation:subject", &["Observation"]).unwrap();
        assert_eq!(
            (
                inc.reverse,
                inc.source.as_deref(),
                inc.param.as_deref(),
                inc.target,
                inc.iterate
            ),
            (false, Some("Observation"), Some("subject"), None, false)
        );
        let all = parse("_include", "*", &["Observation"]).unwrap();
        assert!(all.source.is_none() && all.param.is_none());
        let wild = parse("_include:iterate", "Encounter:*", &["Observation"]).unwrap();
        assert!(wild.iterate && wild.param.is_none());
        let rev = parse("_revinclude", "Observation:subject:Patient", &["Patient"]).unwrap();
        assert!(rev.reverse && rev.target.as_deref() == Some("Patient"));
        for (name, value, searched, says) in [
            (
                "_include",
                "Observation:code",
                &["Observation"][..],
                "no reference search parameter",
            ),
            (
                "_include",
                "Observation:subject",
                &["Patient"][..],
                "does not return Observation",
            ),
            (
                "_include",
                "Observation:subject:Medication",
                &["Observation"][..],
                "does not refer to Medication",
            ),
            (
                "_revinclude",
                "Observation:subject",
                &["Medication"][..],
                "does not refer to the resources",
            ),
            (
                "_revinclude",
                "*",
                &["Observation"][..],
                "use Type:parameter",
            ),
            (
                "_revinclude",
                "Observation:*",
                &["Patient"][..],
                "wildcard _revinclude",
            ),
            (
                "_include",
                "Encounter:*",
                &["Observation"][..],
                "does not return Encounter",
            ),
            (
                "_include",
                "Nope:*",
                &["Observation"][..],
                "not a resource type",
            ),
            (
                "_include:deep",
                "Observation:subject",
                &["Observation"][..],
                "not a form of _include",
            ),
        ] {
            let e = parse(name, value, searched).unwrap_err();
            assert!(e.contains(says), "{name}={value}: {e}");
        }
        // A system search may include from any type.
        assert!(parse("_include", "Encounter:patient", &[]).is_ok());
    }

    #[test]
    fn forward_includes_search_referenced_ids_by_type() {
        let observation = |id: &str, subject: &str| StoredResource {
            resource_type: "Observation".into(),
            id: id.into(),
            version_id: 1,
            last_updated: 0,
            deleted: false,
            body: format!(
                r#"{{"resourceType":"Observation","id":"{id}","subject":{{"reference":"{subject}"}}}}"#
            ),
        };
        let page = [
            observation("o1", "Patient/p1"),
            observation("o2", "Patient/p1"),
            observation("o3", "Group/g1"),
        ];
        let include = Include::parse("_include", "Observation:subject", &["Observation"]).unwrap();
        let qs = queries(&include, &page);
        let by_type: Vec<(Option<String>, Option<Vec<String>>)> =
            qs.into_iter().map(|q| (q.resource_type, q.ids)).collect();
        assert_eq!(
            by_type,
            [
                (Some("Group".to_owned()), Some(vec!["g1".to_owned()])),
                (Some("Patient".to_owned()), Some(vec!["p1".to_owned()]))
            ]
        );
        let only =
            Include::parse("_include", "Observation:subject:Patient", &["Observation"]).unwrap();
        assert_eq!(queries(&only, &page).len(), 1);
        let rev = Include::parse("_revinclude", "Observation:subject", &["Observation"]);
        assert!(
            rev.is_err(),
            "an Observation's subject is never an Observation"
        );
    }
}
