//! One source of configuration values: the file, the environment or flags.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use super::{ConfigError, keys::KEYS};
use crate::model::{Cidr, PortRange, Protocol, Rule, RuleError, Verb, parse_policy};

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File(path) => write!(f, "config file {}", path.display()),
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::Flag(flag) => write!(f, "command-line flag {flag}"),
        }
    }
}

/// A raw value, typed later by the key that reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// From the environment, a flag or a default.
    Text(String),
    /// From the TOML file.
    Toml(toml::Value),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(s) => f.write_str(s),
            Self::Toml(toml::Value::String(s)) => f.write_str(s),
            Self::Toml(v) => write!(f, "{v}"),
        }
    }
}

fn invalid(origin: &Origin, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.clone(),
        key: key.to_owned(),
        reason: reason.into(),
    }
}

impl Value {
    pub fn as_text(&self, key: &str, origin: &Origin) -> Result<String, ConfigError> {
        match self {
            Self::Text(s) | Self::Toml(toml::Value::String(s)) => Ok(s.trim().to_owned()),
            Self::Toml(other) => Err(invalid(
                origin,
                key,
                format!("expected a string, found {}", other.type_str()),
            )),
        }
    }

    pub fn as_bool(&self, key: &str, origin: &Origin) -> Result<bool, ConfigError> {
        match self {
            Self::Toml(toml::Value::Boolean(b)) => Ok(*b),
            Self::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => Ok(true),
                "false" | "no" | "0" => Ok(false),
                _ => Err(invalid(
                    origin,
                    key,
                    format!("`{s}` is neither true nor false"),
                )),
            },
            Self::Toml(other) => Err(invalid(
                origin,
                key,
                format!("expected true or false, found {}", other.type_str()),
            )),
        }
    }

    pub fn as_integer(&self, key: &str, origin: &Origin) -> Result<u64, ConfigError> {
        match self {
            Self::Toml(toml::Value::Integer(i)) => {
                u64::try_from(*i).map_err(|_| invalid(origin, key, format!("{i} is negative")))
            }
            Self::Text(s) => s
                .trim()
                .parse()
                .map_err(|_| invalid(origin, key, format!("`{s}` is not a whole number"))),
            Self::Toml(other) => Err(invalid(
                origin,
                key,
                format!("expected an integer, found {}", other.type_str()),
            )),
        }
    }

    /// `[[routing_rules]]` tables in TOML; the label syntax elsewhere.
    pub fn as_rules(&self, key: &str, origin: &Origin) -> Result<Vec<Rule>, ConfigError> {
        match self {
            Self::Text(s) if s.trim().is_empty() => Ok(Vec::new()),
            Self::Text(s) => {
                let policy = parse_policy(s).map_err(|e| invalid(origin, key, e.to_string()))?;
                if policy.with_global {
                    return Err(invalid(origin, key, RuleError::GlobalInGlobal.to_string()));
                }
                Ok(policy.rules)
            }
            Self::Toml(toml::Value::Array(items)) => {
                let mut rules: Vec<Rule> = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    rules.push(table_rule(item, &format!("{key}[{i}]"), origin)?);
                }
                rules.sort();
                rules.dedup();
                Ok(rules)
            }
            Self::Toml(other) => Err(invalid(
                origin,
                key,
                format!("expected [[{key}]] tables, found {}", other.type_str()),
            )),
        }
    }
}

fn table_rule(item: &toml::Value, key: &str, origin: &Origin) -> Result<Rule, ConfigError> {
    let toml::Value::Table(table) = item else {
        return Err(invalid(
            origin,
            key,
            format!("expected a table, found {}", item.type_str()),
        ));
    };
    for field in table.keys() {
        if !["destination", "protocol", "port_range", "action"].contains(&field.as_str()) {
            return Err(ConfigError::UnknownKey {
                origin: origin.clone(),
                key: format!("{key}.{field}"),
                hint: "; a rule has destination, protocol, port_range and action".into(),
            });
        }
    }
    let field = |name: &str| -> Result<Option<String>, ConfigError> {
        match table.get(name) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(toml::Value::Integer(i)) if name == "port_range" => Ok(Some(i.to_string())),
            Some(other) => Err(invalid(
                origin,
                &format!("{key}.{name}"),
                format!("expected a string, found {}", other.type_str()),
            )),
        }
    };
    let destination = field("destination")?
        .ok_or_else(|| invalid(origin, &format!("{key}.destination"), "is required"))?;
    let destination: Cidr = destination.parse().map_err(|e: crate::model::RuleError| {
        invalid(origin, &format!("{key}.destination"), e.to_string())
    })?;
    let protocol: Option<Protocol> = field("protocol")?.map(|p| p.parse()).transpose().map_err(
        |e: crate::model::RuleError| invalid(origin, &format!("{key}.protocol"), e.to_string()),
    )?;
    let ports: Option<PortRange> = field("port_range")?
        .map(|p| p.parse())
        .transpose()
        .map_err(|e: crate::model::RuleError| {
            invalid(origin, &format!("{key}.port_range"), e.to_string())
        })?;
    let verb: Verb = match field("action")? {
        None => Verb::Via,
        Some(word) => word.parse().map_err(|()| {
            invalid(
                origin,
                &format!("{key}.action"),
                format!("`{word}` is not one of via, direct, block"),
            )
        })?,
    };
    let rule = Rule::new(destination, protocol, ports)
        .map_err(|e| invalid(origin, key, e.to_string()))?
        .with_verb(verb);
    if verb == Verb::Direct && protocol.is_some() {
        return Err(invalid(
            origin,
            key,
            "a direct rule excludes whole destinations and takes no protocol or port_range",
        ));
    }
    Ok(rule)
}

/// Values from one source, by dotted key name, each with its origin.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    values: BTreeMap<String, (Value, Origin)>,
}

/// Sections of the TOML file; their keys become `section.key`.
const SECTIONS: &[&str] = &[
    "docker",
    "logging",
    "dataplane",
    "limits",
    "metrics",
    "probes",
    "failover",
    "rate_limits",
    "control",
];

impl Layer {
    pub fn get(&self, key: &str) -> Option<&(Value, Origin)> {
        self.values.get(key)
    }

    pub fn set(&mut self, key: &str, value: String, origin: Origin) {
        self.values
            .insert(key.to_owned(), (Value::Text(value), origin));
    }

    /// Reads and flattens a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    pub fn from_toml(text: &str, path: &std::path::Path) -> Result<Self, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_owned(),
                    message: e.to_string().trim().replace('\n', " "),
                })?;
        let origin = Origin::File(path.to_owned());
        let mut layer = Self::default();
        for (key, value) in table {
            match value {
                toml::Value::Table(section) if SECTIONS.contains(&key.as_str()) => {
                    for (sub, value) in section {
                        layer
                            .values
                            .insert(format!("{key}.{sub}"), (Value::Toml(value), origin.clone()));
                    }
                }
                value => {
                    layer
                        .values
                        .insert(key, (Value::Toml(value), origin.clone()));
                }
            }
        }
        Ok(layer)
    }

    /// `NETWARP_*` variables from `vars` (normally `std::env::vars()`).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut layer = Self::default();
        for (var, value) in vars {
            if let Some(spec) = KEYS.iter().find(|k| k.env == var) {
                layer.set(spec.name, value, Origin::Env(var));
            }
        }
        layer
    }

    pub fn check_known_keys(&self) -> Result<(), ConfigError> {
        for (key, (_, origin)) in &self.values {
            if !KEYS.iter().any(|k| k.name == key) {
                let hint = match KEYS.iter().find(|k| {
                    k.name.ends_with(&format!(".{key}"))
                        || key.ends_with(k.name.rsplit('.').next().unwrap_or_default())
                }) {
                    Some(k) => format!("; did you mean `{}`?", k.name),
                    None => "; run `netwarp check-config --keys` to list the keys".into(),
                };
                return Err(ConfigError::UnknownKey {
                    origin: origin.clone(),
                    key: key.clone(),
                    hint,
                });
            }
        }
        Ok(())
    }
}
