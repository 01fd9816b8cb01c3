//! Variables in `buildopt.toml` string values, as Compose interpolates them: `$VAR`, `${VAR}`, `${VAR:-default}`
//! (unset or empty), `${VAR-default}` (unset), `${VAR:?message}` / `${VAR?message}` (required), `${VAR:+other}` /
//! `${VAR+other}` (when set), `$$` for a literal `$`. Defaults and replacements may hold variables themselves.
//! Unlike Compose, an unset variable without a default is an error in `buildopt.toml`, not an empty string: a CI
//! run with a missing `GIT_SHA` must not push a tag named after nothing. A compose file is read as Compose reads it
//! ([`interpolate_lenient`]): an unset variable is empty, and the caller warns.

/// Why a value could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VarError {
    /// A variable with no value and no default.
    #[error("variable `{0}` is not set; set it, or give a default with `${{{0}:-default}}`")]
    Unset(String),
    /// A `${VAR:?message}` whose variable is not set (or empty with `:?`).
    #[error("variable `{name}` is required: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The message written after `?`.
        message: String,
    },
    /// Text that is not an interpolation.
    #[error("{0}")]
    Syntax(String),
}

/// Replaces every variable in `s` by its value from `env`.
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, VarError> {
    run(s, &Vars { env, unset: None })
}

/// [`interpolate`] as Compose does it: a variable that is not set (`$VAR`, `${VAR}`) is an empty string, and its
/// name is given to `unset`; defaults, `?` and `+` work as in [`interpolate`].
pub fn interpolate_lenient(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
    unset: &mut dyn FnMut(&str),
) -> Result<String, VarError> {
    let cell = std::cell::RefCell::new(unset);
    let note = |name: &str| (cell.borrow_mut())(name);
    run(
        s,
        &Vars {
            env,
            unset: Some(&note),
        },
    )
}

/// Where variables get their values, and what an unset one without a default is: an error, or (`unset` given) an
/// empty string that is reported.
struct Vars<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    unset: Option<&'a dyn Fn(&str)>,
}

impl Vars<'_> {
    /// The value of a variable written without a default.
    fn required(&self, name: String) -> Result<String, VarError> {
        match ((self.env)(&name), self.unset) {
            (Some(v), _) => Ok(v),
            (None, Some(note)) => {
                note(&name);
                Ok(String::new())
            }
            (None, None) => Err(VarError::Unset(name)),
        }
    }
}

fn run(s: &str, vars: &Vars<'_>) -> Result<String, VarError> {
    let chars: Vec<char> = s.chars().collect();
    let (out, end) = expand(&chars, 0, None, vars)?;
    debug_assert_eq!(end, chars.len());
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands from `i` until the end, or until an unmatched `}` when `stop` is given (inside a default); returns the
/// text and where it stopped.
fn expand(
    chars: &[char],
    mut i: usize,
    stop: Option<char>,
    vars: &Vars<'_>,
) -> Result<(String, usize), VarError> {
    let mut out = String::new();
    while i < chars.len() {
        let c = chars[i];
        if Some(c) == stop {
            return Ok((out, i));
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some(&n) if is_name_start(n) => {
                let start = i + 1;
                let mut j = start;
                while j < chars.len() && is_name(chars[j]) {
                    j += 1;
                }
                let name: String = chars[start..j].iter().collect();
                out.push_str(&vars.required(name)?);
                i = j;
            }
            Some('{') => {
                let (value, next) = braced(chars, i + 2, vars)?;
                out.push_str(&value);
                i = next;
            }
            _ => {
                return Err(VarError::Syntax(
                    "`$` must start a variable (`$NAME`, `${NAME}`); write `$$` for a literal `$`"
                        .to_owned(),
                ));
            }
        }
    }
    match stop {
        Some(_) => Err(VarError::Syntax("`${` without its closing `}`".to_owned())),
        None => Ok((out, i)),
    }
}

/// `${...}` from just after the `{`; returns the value and the index after the `}`.
fn braced(chars: &[char], start: usize, vars: &Vars<'_>) -> Result<(String, usize), VarError> {
    let mut j = start;
    while j < chars.len() && is_name(chars[j]) {
        j += 1;
    }
    let name: String = chars[start..j].iter().collect();
    if name.is_empty() || !chars[start].is_ascii_alphabetic() && chars[start] != '_' {
        return Err(VarError::Syntax(format!(
            "`${{{}` does not start with a variable name",
            chars[start..].iter().take(16).collect::<String>()
        )));
    }
    let value = (vars.env)(&name);
    let colon = chars.get(j) == Some(&':');
    let op_at = if colon { j + 1 } else { j };
    let op = chars.get(op_at).copied();
    if !colon && op == Some('}') {
        let value = match value {
            Some(v) => v,
            None => vars.required(name)?,
        };
        return Ok((value, j + 1));
    }
    let (word, end) = match op {
        Some('-' | '?' | '+') => expand(chars, op_at + 1, Some('}'), vars)?,
        _ => {
            return Err(VarError::Syntax(format!(
                "`${{{name}` must be followed by `}}`, `:-`, `-`, `:?`, `?`, `:+` or `+`"
            )));
        }
    };
    // With `:`, an empty value counts as unset.
    let set = value.clone().filter(|v| !colon || !v.is_empty());
    let result = match op {
        Some('-') => set.unwrap_or(word),
        Some('?') => set.ok_or(VarError::Required {
            name,
            message: word,
        })?,
        Some('+') => {
            if set.is_some() {
                word
            } else {
                String::new()
            }
        }
        _ => unreachable!("matched above"),
    };
    Ok((result, end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SHA" => Some("abc123".to_owned()),
            "EMPTY" => Some(String::new()),
            "BRANCH" => Some("main".to_owned()),
            _ => None,
        }
    }

    fn i(s: &str) -> Result<String, VarError> {
        interpolate(s, &env)
    }

    #[test]
    fn compose_forms() {
        assert_eq!(i("v-${SHA}").unwrap(), "v-abc123");
        assert_eq!(i("$SHA.$BRANCH").unwrap(), "abc123.main");
        assert_eq!(i("${NOPE:-dev}").unwrap(), "dev");
        assert_eq!(i("${EMPTY:-dev}").unwrap(), "dev");
        assert_eq!(i("${EMPTY-dev}").unwrap(), "");
        assert_eq!(i("${NOPE-dev}").unwrap(), "dev");
        assert_eq!(i("${SHA:+set}${NOPE:+x}").unwrap(), "set");
        assert_eq!(i("${EMPTY+set}").unwrap(), "set");
        assert_eq!(i("cache-${BRANCH_X:-${BRANCH}}").unwrap(), "cache-main");
        assert_eq!(i("$$HOME and $${SHA}").unwrap(), "$HOME and ${SHA}");
        assert_eq!(i("no variables").unwrap(), "no variables");
    }

    #[test]
    fn errors() {
        assert_eq!(i("${NOPE}"), Err(VarError::Unset("NOPE".to_owned())));
        assert_eq!(i("$NOPE"), Err(VarError::Unset("NOPE".to_owned())));
        assert_eq!(
            i("${NOPE:?set NOPE to the release}"),
            Err(VarError::Required {
                name: "NOPE".to_owned(),
                message: "set NOPE to the release".to_owned()
            })
        );
        assert!(matches!(i("${EMPTY:?no}"), Err(VarError::Required { .. })));
        assert_eq!(i("${EMPTY?no}").unwrap(), "");
        for bad in ["$", "a$-b", "${", "${SHA", "${1X}", "${SHA:x}", "${SHA:-a"] {
            assert!(matches!(i(bad), Err(VarError::Syntax(_))), "{bad}");
        }
    }

    #[test]
    fn lenient_is_compose_for_unset_variables() {
        let mut unset = Vec::new();
        let mut note = |n: &str| unset.push(n.to_owned());
        let out = interpolate_lenient("a${NOPE}b$GONE-${NOPE2:-d}${SHA}", &env, &mut note).unwrap();
        assert_eq!(out, "ab-dabc123");
        assert_eq!(unset, ["NOPE", "GONE"]);
        let mut note = |_: &str| {};
        assert!(matches!(
            interpolate_lenient("${NOPE:?needed}", &env, &mut note),
            Err(VarError::Required { .. })
        ));
    }
}
