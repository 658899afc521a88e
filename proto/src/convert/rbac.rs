//! The RBAC HTTP filter (`envoy.filters.http.rbac`, an `RBAC` first in the connection
//! manager's `http_filters`): Envoy's `config.rbac.v3` rules with the permissions and
//! principals gofe evaluates; everything else refused by name.

use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as rbac_filter;
use gofe_model::rbac::{
    AuthenticatedConfig, CidrConfig, PathMatcherConfig, PermissionConfig, PermissionSetConfig,
    PrincipalConfig, PrincipalSetConfig, RbacAction, RbacPolicyConfig, RbacRulesConfig,
};
use gofe_model::RbacConfig;

use super::*;

/// The RBAC HTTP filter's name.
pub const RBAC_FILTER_NAME: &str = "envoy.filters.http.rbac";

// === to wire ===

/// The filter, for the connection manager's `http_filters`.
pub(super) fn filter_to_wire(r: &RbacConfig) -> Result<hcm::HttpFilter, String> {
    let rules = &r.rules;
    let mut policies = HashMap::new();
    for (name, p) in &rules.policies {
        policies.insert(
            name.clone(),
            rbac::Policy {
                permissions: p
                    .permissions
                    .iter()
                    .map(permission_to_wire)
                    .collect::<Result<_, _>>()?,
                principals: p
                    .principals
                    .iter()
                    .map(principal_to_wire)
                    .collect::<Result<_, _>>()?,
                ..Default::default()
            },
        );
    }
    let action = match rules.action {
        RbacAction::Allow => rbac::rbac::Action::Allow,
        RbacAction::Deny => rbac::rbac::Action::Deny,
    };
    let config = rbac_filter::Rbac {
        rules: Some(rbac::Rbac {
            action: action as i32,
            policies,
            audit_logging_options: None,
        }),
        ..Default::default()
    };
    Ok(hcm::HttpFilter {
        name: RBAC_FILTER_NAME.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(to_any(&config))),
        ..Default::default()
    })
}

/// A string matcher in Envoy's form.
pub(super) fn string_match_to_wire(
    m: &StringMatchConfig,
) -> Result<matcher::StringMatcher, String> {
    use matcher::string_matcher::MatchPattern;
    let pattern = match (&m.exact, &m.prefix, &m.suffix, &m.contains) {
        (Some(v), None, None, None) => MatchPattern::Exact(v.clone()),
        (None, Some(v), None, None) => MatchPattern::Prefix(v.clone()),
        (None, None, Some(v), None) => MatchPattern::Suffix(v.clone()),
        (None, None, None, Some(v)) => MatchPattern::Contains(v.clone()),
        _ => return Err("a string match needs exactly one pattern".into()),
    };
    Ok(matcher::StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    })
}

fn cidr_to_wire(c: &CidrConfig) -> core::CidrRange {
    core::CidrRange {
        address_prefix: c.address_prefix.clone(),
        prefix_len: Some(UInt32Value {
            value: c.prefix_len,
        }),
    }
}

fn permission_to_wire(p: &PermissionConfig) -> Result<rbac::Permission, String> {
    use rbac::permission::Rule;
    let set = |s: &PermissionSetConfig| -> Result<rbac::permission::Set, String> {
        Ok(rbac::permission::Set {
            rules: s
                .rules
                .iter()
                .map(permission_to_wire)
                .collect::<Result<_, _>>()?,
        })
    };
    let rule = match p {
        PermissionConfig::Any(b) => Rule::Any(*b),
        PermissionConfig::Header(h) => Rule::Header(super::routes::header_to_wire(h)?),
        PermissionConfig::UrlPath(m) => Rule::UrlPath(matcher::PathMatcher {
            rule: Some(matcher::path_matcher::Rule::Path(string_match_to_wire(
                &m.path,
            )?)),
        }),
        PermissionConfig::DestinationPort(port) => Rule::DestinationPort(u32::from(*port)),
        PermissionConfig::AndRules(s) => Rule::AndRules(set(s)?),
        PermissionConfig::OrRules(s) => Rule::OrRules(set(s)?),
        PermissionConfig::NotRule(r) => Rule::NotRule(Box::new(permission_to_wire(r)?)),
    };
    Ok(rbac::Permission { rule: Some(rule) })
}

fn principal_to_wire(p: &PrincipalConfig) -> Result<rbac::Principal, String> {
    use rbac::principal::Identifier as Id;
    let set = |s: &PrincipalSetConfig| -> Result<rbac::principal::Set, String> {
        Ok(rbac::principal::Set {
            ids: s
                .ids
                .iter()
                .map(principal_to_wire)
                .collect::<Result<_, _>>()?,
        })
    };
    let id = match p {
        PrincipalConfig::Any(b) => Id::Any(*b),
        PrincipalConfig::Authenticated(a) => Id::Authenticated(rbac::principal::Authenticated {
            principal_name: a
                .principal_name
                .as_ref()
                .map(string_match_to_wire)
                .transpose()?,
        }),
        PrincipalConfig::DirectRemoteIp(c) => Id::DirectRemoteIp(cidr_to_wire(c)),
        PrincipalConfig::RemoteIp(c) => Id::RemoteIp(cidr_to_wire(c)),
        PrincipalConfig::AndIds(s) => Id::AndIds(set(s)?),
        PrincipalConfig::OrIds(s) => Id::OrIds(set(s)?),
        PrincipalConfig::NotId(id) => Id::NotId(Box::new(principal_to_wire(id)?)),
    };
    Ok(rbac::Principal {
        identifier: Some(id),
    })
}

// === from wire ===

/// Whether `any` is an RBAC filter's configuration.
pub(super) fn is_rbac(any: &Any) -> bool {
    any.type_url == rbac_filter::Rbac::type_url()
}

/// The filter's configuration: its rules, or `None` when it has none (Envoy's filter then
/// lets every request through).
pub(super) fn filter_from_wire(
    f: &hcm::HttpFilter,
    any: &Any,
    res: &str,
    base: &str,
) -> Result<Option<RbacConfig>, ConvertError> {
    let tbase = join(base, "typed_config");
    Unsupported::new(res, base)
        .when("disabled", f.disabled)
        .finish()?;
    let rbac_filter::Rbac {
        rules,
        // Statistics names: gofe counts denials its own way.
        rules_stat_prefix: _,
        matcher,
        shadow_rules,
        shadow_matcher,
        shadow_rules_stat_prefix: _,
        track_per_rule_stats: _,
    } = from_any(any)?;
    Unsupported::new(res, &tbase)
        .set("matcher", &matcher)
        .set("shadow_rules", &shadow_rules)
        .set("shadow_matcher", &shadow_matcher)
        .finish()?;
    let Some(rules) = rules else {
        return Ok(None);
    };
    let rbase = join(&tbase, "rules");
    let rbac::Rbac {
        action,
        policies,
        audit_logging_options,
    } = rules;
    Unsupported::new(res, &rbase)
        .set("audit_logging_options", &audit_logging_options)
        .finish()?;
    let action = match rbac::rbac::Action::try_from(action) {
        Ok(rbac::rbac::Action::Allow) => RbacAction::Allow,
        Ok(rbac::rbac::Action::Deny) => RbacAction::Deny,
        _ => {
            return Err(invalid(
                res,
                &join(&rbase, "action"),
                "only ALLOW and DENY are supported by gofe",
            ))
        }
    };
    let mut out = BTreeMap::new();
    for (name, p) in policies {
        let pbase = join(&rbase, &format!("policies[{name:?}]"));
        let rbac::Policy {
            permissions,
            principals,
            condition,
            checked_condition,
            cel_config,
        } = p;
        Unsupported::new(res, &pbase)
            .set("condition", &condition)
            .set("checked_condition", &checked_condition)
            .set("cel_config", &cel_config)
            .finish()?;
        let permissions = permissions
            .iter()
            .enumerate()
            .map(|(i, p)| permission_from_wire(p, res, &join(&pbase, &format!("permissions[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        let principals = principals
            .iter()
            .enumerate()
            .map(|(i, p)| principal_from_wire(p, res, &join(&pbase, &format!("principals[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(
            name,
            RbacPolicyConfig {
                permissions,
                principals,
            },
        );
    }
    Ok(Some(RbacConfig {
        rules: RbacRulesConfig {
            action,
            policies: out,
        },
    }))
}

/// A string matcher gofe can compare with (exact, prefix, suffix, contains; case-sensitive).
pub(super) fn string_match_from_wire(
    m: &matcher::StringMatcher,
    res: &str,
    base: &str,
) -> Result<StringMatchConfig, ConvertError> {
    use matcher::string_matcher::MatchPattern;
    Unsupported::new(res, base)
        .when("ignore_case", m.ignore_case)
        .finish()?;
    let mut sm = StringMatchConfig::default();
    match &m.match_pattern {
        Some(MatchPattern::Exact(v)) => sm.exact = Some(v.clone()),
        Some(MatchPattern::Prefix(v)) => sm.prefix = Some(v.clone()),
        Some(MatchPattern::Suffix(v)) => sm.suffix = Some(v.clone()),
        Some(MatchPattern::Contains(v)) => sm.contains = Some(v.clone()),
        Some(MatchPattern::SafeRegex(_)) => {
            return Err(unsupported(res, &join(base, "safe_regex")))
        }
        Some(MatchPattern::Custom(_)) => return Err(unsupported(res, &join(base, "custom"))),
        None => return Err(invalid(res, base, "needs a match pattern")),
    }
    Ok(sm)
}

fn cidr_from_wire(c: &core::CidrRange, res: &str, base: &str) -> Result<CidrConfig, ConvertError> {
    let out = CidrConfig {
        address_prefix: c.address_prefix.clone(),
        prefix_len: c.prefix_len.as_ref().map_or(0, |v| v.value),
    };
    out.parse().map_err(|e| invalid(res, base, e))?;
    Ok(out)
}

#[allow(deprecated)]
fn permission_from_wire(
    p: &rbac::Permission,
    res: &str,
    base: &str,
) -> Result<PermissionConfig, ConvertError> {
    use rbac::permission::Rule;
    let set = |s: &rbac::permission::Set, key: &str| -> Result<PermissionSetConfig, ConvertError> {
        let rules = s
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| permission_from_wire(r, res, &join(base, &format!("{key}.rules[{i}]"))))
            .collect::<Result<_, _>>()?;
        Ok(PermissionSetConfig { rules })
    };
    Ok(match &p.rule {
        Some(Rule::Any(b)) => PermissionConfig::Any(*b),
        Some(Rule::Header(h)) => PermissionConfig::Header(
            super::routes::header_from_wire_with_pseudo(h)
                .map_err(|e| invalid(res, &join(base, "header"), e))?,
        ),
        Some(Rule::UrlPath(m)) => {
            let pbase = join(base, "url_path");
            match &m.rule {
                Some(matcher::path_matcher::Rule::Path(sm)) => {
                    PermissionConfig::UrlPath(PathMatcherConfig {
                        path: string_match_from_wire(sm, res, &join(&pbase, "path"))?,
                    })
                }
                None => return Err(invalid(res, &pbase, "needs a path")),
            }
        }
        Some(Rule::DestinationPort(port)) => match u16::try_from(*port) {
            Ok(port) => PermissionConfig::DestinationPort(port),
            Err(_) => return Err(invalid(res, &join(base, "destination_port"), "above 65535")),
        },
        Some(Rule::AndRules(s)) => PermissionConfig::AndRules(set(s, "and_rules")?),
        Some(Rule::OrRules(s)) => PermissionConfig::OrRules(set(s, "or_rules")?),
        Some(Rule::NotRule(r)) => PermissionConfig::NotRule(Box::new(permission_from_wire(
            r,
            res,
            &join(base, "not_rule"),
        )?)),
        Some(other) => {
            let field = match other {
                Rule::DestinationIp(_) => "destination_ip",
                Rule::DestinationPortRange(_) => "destination_port_range",
                Rule::Metadata(_) => "metadata",
                Rule::RequestedServerName(_) => "requested_server_name",
                Rule::Matcher(_) => "matcher",
                Rule::UriTemplate(_) => "uri_template",
                _ => "sourced_metadata",
            };
            return Err(unsupported(res, &join(base, field)));
        }
        None => return Err(invalid(res, base, "needs a rule")),
    })
}

#[allow(deprecated)]
fn principal_from_wire(
    p: &rbac::Principal,
    res: &str,
    base: &str,
) -> Result<PrincipalConfig, ConvertError> {
    use rbac::principal::Identifier as Id;
    let set = |s: &rbac::principal::Set, key: &str| -> Result<PrincipalSetConfig, ConvertError> {
        let ids = s
            .ids
            .iter()
            .enumerate()
            .map(|(i, r)| principal_from_wire(r, res, &join(base, &format!("{key}.ids[{i}]"))))
            .collect::<Result<_, _>>()?;
        Ok(PrincipalSetConfig { ids })
    };
    Ok(match &p.identifier {
        Some(Id::Any(b)) => PrincipalConfig::Any(*b),
        Some(Id::Authenticated(a)) => PrincipalConfig::Authenticated(AuthenticatedConfig {
            principal_name: a
                .principal_name
                .as_ref()
                .map(|m| {
                    string_match_from_wire(m, res, &join(base, "authenticated.principal_name"))
                })
                .transpose()?,
        }),
        // The deprecated source_ip is the connection's peer address, as direct_remote_ip.
        Some(Id::SourceIp(c)) => {
            PrincipalConfig::DirectRemoteIp(cidr_from_wire(c, res, &join(base, "source_ip"))?)
        }
        Some(Id::DirectRemoteIp(c)) => PrincipalConfig::DirectRemoteIp(cidr_from_wire(
            c,
            res,
            &join(base, "direct_remote_ip"),
        )?),
        Some(Id::RemoteIp(c)) => {
            PrincipalConfig::RemoteIp(cidr_from_wire(c, res, &join(base, "remote_ip"))?)
        }
        Some(Id::AndIds(s)) => PrincipalConfig::AndIds(set(s, "and_ids")?),
        Some(Id::OrIds(s)) => PrincipalConfig::OrIds(set(s, "or_ids")?),
        Some(Id::NotId(id)) => PrincipalConfig::NotId(Box::new(principal_from_wire(
            id,
            res,
            &join(base, "not_id"),
        )?)),
        Some(other) => {
            let field = match other {
                Id::Header(_) => "header",
                Id::UrlPath(_) => "url_path",
                Id::Metadata(_) => "metadata",
                Id::FilterState(_) => "filter_state",
                Id::SourcedMetadata(_) => "sourced_metadata",
                _ => "custom",
            };
            return Err(unsupported(res, &join(base, field)));
        }
        None => return Err(invalid(res, base, "needs an identifier")),
    })
}
