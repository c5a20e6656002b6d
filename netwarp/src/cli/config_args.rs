//! The flags shared by the subcommands that read the configuration: one
//! per key that the key table gives a flag, so the table is their only
//! spelling. Each overrides the matching `NETWARP_*` variable and key.

use std::path::PathBuf;

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};

use crate::config::{Config, KEYS, KeySpec, Layer, Origin};

const DEFAULT_CONFIG: &str = "/etc/netwarp/netwarp.toml";
const CONFIG_FILE: &str = "config";

#[derive(Clone, Default)]
pub struct ConfigArgs {
    /// TOML config file (default: /etc/netwarp/netwarp.toml if it exists).
    config: Option<PathBuf>,
    /// The values given by flag, with their key.
    flags: Vec<(&'static KeySpec, String)>,
}

/// The keys with a flag, and the flag.
fn flagged() -> impl Iterator<Item = (&'static KeySpec, &'static str)> {
    KEYS.iter()
        .filter_map(|spec| spec.flag.map(|flag| (*spec, flag)))
}

impl Args for ConfigArgs {
    fn augment_args(cmd: Command) -> Command {
        let config = Arg::new(CONFIG_FILE)
            .long("config")
            .short('c')
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("TOML config file (default: /etc/netwarp/netwarp.toml if it exists)");
        flagged().fold(cmd.arg(config), |cmd, (spec, flag)| {
            cmd.arg(
                Arg::new(spec.name)
                    .long(flag)
                    .value_name("VALUE")
                    .help(format!("{} ({})", spec.doc, spec.name)),
            )
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ConfigArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Self::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(path) = matches.get_one::<PathBuf>(CONFIG_FILE) {
            self.config = Some(path.clone());
        }
        for (spec, _) in flagged() {
            if let Some(value) = matches.get_one::<String>(spec.name) {
                self.flags.retain(|(s, _)| s.name != spec.name);
                self.flags.push((spec, value.clone()));
            }
        }
        Ok(())
    }
}

impl ConfigArgs {
    /// Flags over environment over file over defaults.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut flags = Layer::default();
        for (spec, value) in &self.flags {
            let flag = spec.flag.unwrap_or(spec.name);
            flags.set(spec.name, value.clone(), Origin::Flag(format!("--{flag}")));
        }
        let env = Layer::from_env(std::env::vars());
        let file = match &self.config {
            Some(path) => Layer::from_file(path)?,
            None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
                Layer::from_file(DEFAULT_CONFIG.as_ref())?
            }
            None => Layer::default(),
        };
        Ok(Config::resolve(&[flags, env, file])?)
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: ConfigArgs,
    }

    #[test]
    fn every_flag_in_the_key_table_sets_its_key() {
        Cli::command().debug_assert();
        let flags: Vec<_> = flagged().collect();
        assert!(flags.len() >= 10, "the table lost its flags");
        for (spec, flag) in flags {
            let value = "x-value";
            let cli = Cli::try_parse_from(["netwarp", &format!("--{flag}"), value])
                .unwrap_or_else(|e| panic!("--{flag}: {e}"));
            let set: Vec<_> = (cli.config.flags.iter())
                .map(|(s, v)| (s.name, v.as_str()))
                .collect();
            assert_eq!(set, [(spec.name, value)], "--{flag}");
        }
    }

    #[test]
    fn a_flag_names_itself_as_the_origin() {
        let cli = Cli::try_parse_from(["netwarp", "--resync-interval-secs", "7"]).unwrap();
        let config = cli.config.load().unwrap();
        let (value, origin) = &config.effective["dataplane.resync_interval_secs"];
        assert_eq!(value, "7");
        assert_eq!(
            origin.to_string(),
            "command-line flag --resync-interval-secs"
        );
        let cli = Cli::try_parse_from(["netwarp", "--resync-interval-secs", "soon"]).unwrap();
        let error = cli.config.load().unwrap_err().to_string();
        assert!(
            error.contains("--resync-interval-secs") && error.contains("soon"),
            "{error}"
        );
    }
}
