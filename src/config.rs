//! The config file (`--config FILE` or `DOCMIRROR_CONFIG`): everything a flag
//! can say, in TOML, so a unit file stays short. Keys are the long flag names
//! (`data-dir`, or `data_dir`); a `[sync]`, `[watch]`, `[verify]` or
//! `[status]` table scopes keys to one command. Unknown keys are rejected.
//!
//! The file's values become the flags' defaults before the command line is
//! parsed, so the order of precedence is: flag, environment, file, built-in.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Command, CommandFactory, FromArgMatches};

use crate::cli::Cli;

const SECTIONS: &[&str] = &["sync", "watch", "verify", "status"];

/// Parse the command line, with the config file's values as defaults.
pub fn parse_cli(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let mut cmd = Cli::command();
    if let Some(path) = config_path(&args) {
        let values = load(&path).map_err(|e| cmd.error(clap::error::ErrorKind::InvalidValue, e))?;
        cmd = apply(cmd, &values).map_err(|e| Cli::command().error(clap::error::ErrorKind::InvalidValue, e))?;
    }
    let matches = cmd.try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// `--config FILE` / `--config=FILE` anywhere on the line, else `DOCMIRROR_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("DOCMIRROR_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// `(section or "", key)` → value as the command line would spell it.
type Values = BTreeMap<(String, String), String>;

fn load(path: &std::path::Path) -> Result<Values, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("config {}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<Values, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut out = Values::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) => {
                if !SECTIONS.contains(&key.as_str()) {
                    return Err(format!("unknown section [{key}]; sections are {}", SECTIONS.join(", ")));
                }
                for (k, v) in inner {
                    out.insert((key.clone(), k.replace('_', "-")), scalar(&k, &v)?);
                }
            }
            v => {
                out.insert((String::new(), key.replace('_', "-")), scalar(&key, &v)?);
            }
        }
    }
    Ok(out)
}

fn scalar(key: &str, v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err(format!("{key}: expected a string, number or boolean")),
    }
}

/// Set each value as the default of the matching argument; refuse keys that
/// no command knows.
fn apply(mut cmd: Command, values: &Values) -> Result<Command, String> {
    for ((section, key), value) in values {
        if key == "config" {
            return Err("`config` cannot be set in the config file".into());
        }
        let mut known = false;
        if let Some(id) = section.is_empty().then(|| arg_id(&cmd, key)).flatten() {
            cmd = cmd.mut_arg(id, |a| a.default_value(value.clone()));
            known = true;
        }
        let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
        for name in names {
            if !section.is_empty() && *section != name {
                continue;
            }
            if let Some(id) = cmd.find_subcommand(&name).and_then(|s| arg_id(s, key)) {
                cmd = cmd.mut_subcommand(name.as_str(), |s| s.mut_arg(id, |a| a.default_value(value.clone())));
                known = true;
            }
        }
        if !known {
            let shown = if section.is_empty() { key.clone() } else { format!("[{section}] {key}") };
            return Err(format!(
                "unknown key {shown:?}: it is not a flag of docmirror{}",
                if section.is_empty() { String::new() } else { format!(" {section}") }
            ));
        }
    }
    Ok(cmd)
}

/// The id of the argument whose long name is `key`.
fn arg_id(cmd: &Command, key: &str) -> Option<String> {
    cmd.get_arguments().find(|a| a.get_long() == Some(key)).map(|a| a.get_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command as C;

    fn parse_with(config: &str, args: &[&str]) -> Result<Cli, String> {
        let values = parse(config)?;
        let cmd = apply(Cli::command(), &values)?;
        let m = cmd.try_get_matches_from(args).map_err(|e| e.to_string())?;
        Cli::from_arg_matches(&m).map_err(|e| e.to_string())
    }

    #[test]
    fn file_values_are_defaults_and_flags_win() {
        let cfg = "data-dir = \"/srv/d\"\nbatch_size = 50\nlog-format = \"json\"\n[watch]\ndebounce-ms = 250\nallow-mass-delete = true\n";
        let cli = parse_with(cfg, &["docmirror", "watch"]).unwrap();
        let C::Watch(w) = &cli.command else { panic!() };
        assert_eq!(w.common.data_dir, PathBuf::from("/srv/d"));
        assert_eq!(w.common.batch_size, 50);
        assert_eq!(w.debounce_ms, 250);
        assert!(w.write.allow_mass_delete);
        assert_eq!(cli.log_format, crate::cli::LogFormat::Json);
        let cli = parse_with(cfg, &["docmirror", "watch", "--data-dir", "/other", "--debounce-ms", "5"]).unwrap();
        let C::Watch(w) = &cli.command else { panic!() };
        assert_eq!(w.common.data_dir, PathBuf::from("/other"));
        assert_eq!(w.debounce_ms, 5);
        // [watch] keys do not leak into sync.
        let cli = parse_with(cfg, &["docmirror", "sync"]).unwrap();
        let C::Sync(s) = &cli.command else { panic!() };
        assert!(!s.write.allow_mass_delete);
    }

    #[test]
    fn unknown_keys_and_sections_are_rejected() {
        assert!(parse_with("colour = 1", &["docmirror", "sync"]).unwrap_err().contains("colour"));
        assert!(parse_with("[sync]\ndebounce-ms = 1", &["docmirror", "sync"]).unwrap_err().contains("debounce-ms"));
        assert!(parse_with("[daemon]\nx = 1", &["docmirror", "sync"]).unwrap_err().contains("daemon"));
        assert!(parse_with("data-dir = [1]", &["docmirror", "sync"]).is_err());
    }

    #[test]
    fn config_path_from_flag() {
        let args: Vec<OsString> = ["docmirror", "sync", "--config", "/etc/d.toml"].iter().map(OsString::from).collect();
        assert_eq!(config_path(&args), Some(PathBuf::from("/etc/d.toml")));
        let args: Vec<OsString> = ["docmirror", "--config=/x.toml", "sync"].iter().map(OsString::from).collect();
        assert_eq!(config_path(&args), Some(PathBuf::from("/x.toml")));
    }
}
