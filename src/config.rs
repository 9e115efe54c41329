//! The config file (`--config FILE` or `DOCMIRROR_CONFIG`): everything a flag
//! can say, in TOML, so a unit file stays short. Keys are the long flag names
//! (`data-dir`, or `data_dir`); a `[sync]`, `[watch]`, `[verify]`,
//! `[status]`, `[export]`, `[cutover]` or `[reverse]` table scopes keys to one command. Unknown keys are rejected.
//!
//! The file's values become the flags' defaults before the command line is
//! parsed, so the order of precedence is: flag, environment, file, built-in.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Command, CommandFactory, FromArgMatches};

use crate::cli::Cli;

const SECTIONS: &[&str] = &["sync", "watch", "verify", "status", "export", "cutover", "reverse"];

/// Parse the command line, with the config file's values as defaults.
pub fn parse_cli(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let mut cmd = Cli::command();
    if let Some(path) = config_path(&args) {
        let values = load(&path).map_err(|e| cmd.error(clap::error::ErrorKind::InvalidValue, e))?;
        cmd = apply(cmd, &values).map_err(|e| Cli::command().error(clap::error::ErrorKind::InvalidValue, e))?;
    }
    let args = hoist(&cmd, args);
    let matches = cmd.try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// A command's own flags may come before its name (`docmirror --data-dir d
/// sync`): they are moved after the name before clap parses the line, so
/// both placements mean the same, with the same precedence (flag,
/// environment, file, default). Flags the command does not take are refused
/// by clap as usual; the program-wide ones (`--log-format`, `-q`, `-v`,
/// `--config`) stay where they are.
fn hoist(cmd: &Command, args: Vec<OsString>) -> Vec<OsString> {
    let mut cmd = cmd.clone();
    cmd.build();
    let takes_value = |c: &Command, long: &str| {
        c.get_arguments().find(|a| a.get_long() == Some(long)).map(|a| a.get_action().takes_values())
    };
    let mut kept: Vec<OsString> = args.iter().take(1).cloned().collect();
    let mut moved = Vec::new();
    let mut i = 1;
    while let Some(word) = args.get(i).and_then(|a| a.to_str()) {
        if word == "--" {
            break;
        }
        if let Some(long) = word.strip_prefix("--") {
            let (name, inline_value) = long.split_once('=').map_or((long, false), |(n, _)| (n, true));
            let (global, own) = match takes_value(&cmd, name) {
                Some(v) => (true, v),
                None => (false, cmd.get_subcommands().find_map(|s| takes_value(s, name)).unwrap_or(false)),
            };
            let end = (i + if own && !inline_value { 2 } else { 1 }).min(args.len());
            let known_elsewhere = !global && cmd.get_subcommands().any(|s| takes_value(s, name).is_some());
            if known_elsewhere { &mut moved } else { &mut kept }.extend_from_slice(&args[i..end]);
            i = end;
            continue;
        }
        if word.starts_with('-') {
            // Short flags are all program-wide (-q, -v, -h, -V).
            kept.push(args[i].clone());
            i += 1;
            continue;
        }
        if cmd.find_subcommand(word).is_none() {
            break;
        }
        kept.push(args[i].clone());
        kept.extend(moved);
        kept.extend_from_slice(&args[i + 1..]);
        return kept;
    }
    args
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
        assert_eq!(w.common.data_dir, Some(PathBuf::from("/srv/d")));
        assert_eq!(w.common.batch_size, 50);
        assert_eq!(w.debounce_ms, 250);
        assert!(w.write.allow_mass_delete);
        assert_eq!(cli.log_format, crate::cli::LogFormat::Json);
        let cli = parse_with(cfg, &["docmirror", "watch", "--data-dir", "/other", "--debounce-ms", "5"]).unwrap();
        let C::Watch(w) = &cli.command else { panic!() };
        assert_eq!(w.common.data_dir, Some(PathBuf::from("/other")));
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

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_commands_flags_may_come_before_its_name() {
        let cmd = Cli::command();
        assert_eq!(
            hoist(
                &cmd,
                os(&["docmirror", "-v", "--data-dir", "d", "--batch-size=5", "--log-format", "json", "sync", "x"])
            ),
            os(&["docmirror", "-v", "--log-format", "json", "sync", "--data-dir", "d", "--batch-size=5", "x"])
        );
        // A value that looks like a command name is still a value.
        assert_eq!(
            hoist(&cmd, os(&["docmirror", "--data-dir", "sync", "sync"])),
            os(&["docmirror", "sync", "--data-dir", "sync"])
        );
        // No command, or an unknown flag: left for clap to explain.
        assert_eq!(hoist(&cmd, os(&["docmirror", "--data-dir", "d"])), os(&["docmirror", "--data-dir", "d"]));
        assert_eq!(hoist(&cmd, os(&["docmirror", "--colour", "sync"])), os(&["docmirror", "--colour", "sync"]));

        // Both placements parse the same; a flag still beats the config file.
        let values = parse("data-dir = \"/from-file\"\nbatch-size = 7\n").unwrap();
        let cmd = apply(Cli::command(), &values).unwrap();
        let parsed = |args: &[&str]| {
            let m = cmd.clone().try_get_matches_from(hoist(&cmd, os(args))).map_err(|e| e.to_string())?;
            Cli::from_arg_matches(&m).map_err(|e| e.to_string())
        };
        for args in
            [&["docmirror", "--data-dir", "/flag", "sync"][..], &["docmirror", "sync", "--data-dir", "/flag"][..]]
        {
            let C::Sync(s) = parsed(args).unwrap().command else { panic!() };
            assert_eq!(s.common.data_dir, Some(PathBuf::from("/flag")), "{args:?}");
            assert_eq!(s.common.batch_size, 7, "{args:?}");
        }
        // status takes no source or write flags, on either side.
        assert!(parsed(&["docmirror", "--batch-size", "5", "status"]).unwrap_err().contains("--batch-size"));
        assert!(parsed(&["docmirror", "status", "--data-dir", "d"]).unwrap_err().contains("--data-dir"));
        assert!(parsed(&["docmirror", "--database", "x", "status"]).is_ok());
    }

    #[test]
    fn config_path_from_flag() {
        let args: Vec<OsString> = ["docmirror", "sync", "--config", "/etc/d.toml"].iter().map(OsString::from).collect();
        assert_eq!(config_path(&args), Some(PathBuf::from("/etc/d.toml")));
        let args: Vec<OsString> = ["docmirror", "--config=/x.toml", "sync"].iter().map(OsString::from).collect();
        assert_eq!(config_path(&args), Some(PathBuf::from("/x.toml")));
    }

    #[test]
    fn reverse_takes_its_folder_and_flags_from_the_config_file() {
        let cfg = "data-dir = \"/srv/p/data\"\n[reverse]\nout = \"/srv/restored\"\ndebounce-ms = 500\n";
        let cli = parse_with(cfg, &["docmirror", "reverse"]).unwrap();
        let C::Reverse(r) = cli.command else { panic!("reverse") };
        assert_eq!(r.out, Some(PathBuf::from("/srv/restored")));
        assert_eq!(r.debounce_ms, 500);
        // The top-level data-dir is a folder reverse refuses to write into.
        assert!(r.forward_roots().contains(&PathBuf::from("/srv/p/data")));
        assert!(parse_with("[reverse]\nbatch-size = 5", &["docmirror", "reverse"]).unwrap_err().contains("batch-size"));
    }

    #[test]
    fn export_takes_its_folder_from_the_config_file() {
        let cli = parse_with("[export]\nout = \"/srv/export\"", &["docmirror", "export"]).unwrap();
        let C::Export(e) = cli.command else { panic!("export") };
        assert_eq!(e.out, Some(PathBuf::from("/srv/export")));
    }
}
