//! A small command-line parser: `roomcast [GLOBAL FLAGS] COMMAND [ARGS AND FLAGS]`, flags as
//! `--name value` or `--name=value`, `--` ends the flags.

/// Flags every command takes (they may also come before the command).
pub const GLOBAL_FLAGS: &[&str] = &["url", "prefix", "pool"];

/// Flags that may be given more than once (each value is kept).
pub const REPEATABLE_FLAGS: &[&str] = &["allowed-origin"];

/// A usage error: what was wrong (exit code 2).
#[derive(Debug)]
pub struct Usage(pub String);

/// A parsed command line.
#[derive(Debug, Default)]
pub struct Args {
    /// The command (`None`: none given).
    pub command: Option<String>,
    /// Arguments after the command that are not flags.
    pub positionals: Vec<String>,
    values: Vec<(String, String)>,
    switches: Vec<String>,
    /// `--help` or `-h` was given.
    pub help: bool,
    /// `--version` or `-V` was given.
    pub version: bool,
}

impl Args {
    /// Parses `raw` (without the program name). `value_flags(command)` names the flags that
    /// take a value for that command, `switches(command)` those that do not.
    pub fn parse(
        raw: &[String],
        value_flags: impl Fn(&str) -> &'static [&'static str],
        switches: impl Fn(&str) -> &'static [&'static str],
    ) -> Result<Args, Usage> {
        let mut args = Args::default();
        let mut it = raw.iter();
        let mut only_positionals = false;
        while let Some(a) = it.next() {
            let cmd = args.command.as_deref().unwrap_or("");
            if only_positionals || !a.starts_with('-') || a == "-" {
                if args.command.is_none() {
                    args.command = Some(a.clone());
                } else {
                    args.positionals.push(a.clone());
                }
                continue;
            }
            match a.as_str() {
                "--" => {
                    only_positionals = true;
                    continue;
                }
                "--help" | "-h" => {
                    args.help = true;
                    continue;
                }
                "--version" | "-V" => {
                    args.version = true;
                    continue;
                }
                _ => {}
            }
            let Some(flag) = a.strip_prefix("--") else {
                return Err(Usage(format!("unknown option '{a}'")));
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            if GLOBAL_FLAGS.contains(&name) || value_flags(cmd).contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| Usage(format!("option '--{name}' needs a value")))?,
                };
                if !REPEATABLE_FLAGS.contains(&name) {
                    args.values.retain(|(n, _)| n != name);
                }
                args.values.push((name.to_string(), value));
            } else if switches(cmd).contains(&name) {
                if inline.is_some() {
                    return Err(Usage(format!("option '--{name}' takes no value")));
                }
                args.switches.push(name.to_string());
            } else if cmd.is_empty() {
                return Err(Usage(format!("unknown option '{a}' before the command")));
            } else {
                return Err(Usage(format!("unknown option '{a}' for '{cmd}'")));
            }
        }
        Ok(args)
    }

    /// The value of `--name`, if given.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable `--name`, in order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.values
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether the switch `--name` was given.
    pub fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    /// `--name` parsed as a number in `min..=max`, or `default`.
    pub fn number<T>(&self, name: &str, default: T, min: T, max: T) -> Result<T, Usage>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(v) = self.value(name) else {
            return Ok(default);
        };
        match v.trim().parse::<T>() {
            Ok(n) if n >= min && n <= max => Ok(n),
            _ => Err(Usage(format!(
                "--{name} must be a number from {min} to {max}, not '{v}'"
            ))),
        }
    }

    /// Exactly `names.len()` positional arguments.
    pub fn exactly(&self, names: &[&str]) -> Result<Vec<String>, Usage> {
        if self.positionals.len() != names.len() {
            return Err(Usage(format!(
                "expected {} ({}), got {} argument(s)",
                names.len(),
                names.join(" "),
                self.positionals.len()
            )));
        }
        Ok(self.positionals.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Args, Usage> {
        let raw: Vec<String> = line.split_whitespace().map(String::from).collect();
        Args::parse(
            &raw,
            |c| {
                if c == "publish" {
                    &["type", "exclude"]
                } else {
                    &[]
                }
            },
            |c| if c == "demo" { &["standalone"] } else { &[] },
        )
    }

    #[test]
    fn flags_anywhere_and_both_spellings() {
        let a = parse("--url redis://h:1 publish r d --type=presence --pool 3").unwrap();
        assert_eq!(a.command.as_deref(), Some("publish"));
        assert_eq!(a.positionals, ["r", "d"]);
        assert_eq!(a.value("url"), Some("redis://h:1"));
        assert_eq!(a.value("type"), Some("presence"));
        assert_eq!(a.number("pool", 10usize, 1, 256).unwrap(), 3);
        assert!(a.number("url", 1usize, 1, 2).is_err());
    }

    #[test]
    fn usage_errors() {
        assert!(parse("publish r d --nope").is_err());
        assert!(parse("--type x publish").is_err());
        assert!(parse("publish r --type").is_err());
        assert!(parse("demo --standalone=1").is_err());
        let a = parse("demo --standalone -- --not-a-flag").unwrap();
        assert!(a.switch("standalone"));
        assert_eq!(a.positionals, ["--not-a-flag"]);
    }
}
