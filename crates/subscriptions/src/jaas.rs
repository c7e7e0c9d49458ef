//! Kafka's `sasl.jaas.config` strings, as Aidbox's `saslJaasConfig`
//! parameter carries them: `<LoginModule> <flag> key="value" …;` (Kafka's
//! `JaasConfig` grammar, a `StreamTokenizer`: a login module class, a
//! control flag, options whose values are bare words or strings in double
//! or single quotes with backslash escapes, and a closing `;`; white space
//! is the bytes up to the space). Comments, which Kafka skips, are refused
//! rather than guessed at. Only the login modules a non-Java client can
//! act on are accepted: PLAIN and SCRAM with a username and password.
//! Errors name what is wrong, never a value.

use secrecy::SecretString;

/// `org.apache.kafka.common.security.plain.PlainLoginModule`
pub const PLAIN_MODULE: &str = "org.apache.kafka.common.security.plain.PlainLoginModule";
/// `org.apache.kafka.common.security.scram.ScramLoginModule`
pub const SCRAM_MODULE: &str = "org.apache.kafka.common.security.scram.ScramLoginModule";

/// Which login module a configuration names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    Plain,
    Scram,
}

impl Module {
    /// Whether this login module goes with SASL mechanism `mechanism`:
    /// `PLAIN` takes PlainLoginModule, `SCRAM-SHA-256/512` ScramLoginModule.
    pub fn fits(self, mechanism: Option<&str>) -> bool {
        match self {
            Module::Plain => mechanism == Some("PLAIN"),
            Module::Scram => mechanism.is_some_and(|m| m.starts_with("SCRAM-")),
        }
    }
}

/// The credentials of a JAAS configuration.
pub struct Jaas {
    pub module: Module,
    pub username: String,
    pub password: SecretString,
}

impl std::fmt::Debug for Jaas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jaas")
            .field("module", &self.module)
            .field("username", &self.username)
            .field("password", &"[REDACTED]")
            .finish()
    }
}

/// Option names an error may show: the ones Kafka's login modules know.
/// Anything else might be a piece of a password that lost its quotes.
const KNOWN_OPTIONS: &[&str] = &[
    "username",
    "password",
    "tokenauth",
    "serviceName",
    "useKeyTab",
    "keyTab",
    "principal",
    "storeKey",
    "unsecuredLoginStringClaim_sub",
];

fn shown(option: &str) -> String {
    if KNOWN_OPTIONS.contains(&option) {
        format!("option {option}")
    } else {
        "an option it does not know (or a value with spaces that lost its quotes)".to_owned()
    }
}

/// A token of the configuration.
enum Token {
    Word(String),
    Quoted(String),
    Equals,
    Semicolon,
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if (c as u32) <= 32 => {
                chars.next();
            }
            '/' => {
                return Err("holds a comment or a bare '/'; quote values that contain '/'".into())
            }
            '=' => {
                chars.next();
                out.push(Token::Equals);
            }
            ';' => {
                chars.next();
                out.push(Token::Semicolon);
            }
            '"' | '\'' => {
                let quote = c;
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => return Err("has a quoted value that is never closed".into()),
                        Some(q) if q == quote => break,
                        Some('\\') => match chars.next() {
                            Some('n') => value.push('\n'),
                            Some('t') => value.push('\t'),
                            Some('r') => value.push('\r'),
                            Some(escaped) => value.push(escaped),
                            None => return Err("ends inside a quoted value".into()),
                        },
                        Some(other) => value.push(other),
                    }
                }
                out.push(Token::Quoted(value));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if (c as u32) <= 32 || matches!(c, '=' | ';' | '"' | '\'' | '/') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(Token::Word(word));
            }
        }
    }
    Ok(out)
}

/// Parses a `saslJaasConfig` value.
pub fn parse(text: &str) -> Result<Jaas, String> {
    let tokens = tokens(text)?;
    let mut tokens = tokens.into_iter();
    let module = match tokens.next() {
        Some(Token::Word(class)) if class == PLAIN_MODULE => Module::Plain,
        Some(Token::Word(class)) if class == SCRAM_MODULE => Module::Scram,
        Some(Token::Word(class)) if class.contains('.') => {
            let short = class.rsplit('.').next().unwrap_or_default();
            return Err(format!(
                "names the login module {short}, which only a Java client can run; use PlainLoginModule or ScramLoginModule with username and password"
            ));
        }
        _ => {
            return Err(
                "must start with a login module class, e.g. org.apache.kafka.common.security.scram.ScramLoginModule required username=\"…\" password=\"…\";"
                    .into(),
            )
        }
    };
    match tokens.next() {
        Some(Token::Word(flag))
            if ["required", "requisite", "sufficient", "optional"]
                .contains(&flag.to_ascii_lowercase().as_str()) => {}
        _ => return Err("needs a control flag after the login module (required)".into()),
    }
    let (mut username, mut password) = (None, None);
    loop {
        match tokens.next() {
            Some(Token::Semicolon) => break,
            Some(Token::Word(key)) => {
                if !matches!(tokens.next(), Some(Token::Equals)) {
                    return Err(format!("has {} without =value", shown(&key)));
                }
                let value = match tokens.next() {
                    Some(Token::Word(v) | Token::Quoted(v)) => v,
                    _ => return Err(format!("has {} without a value", shown(&key))),
                };
                let slot = match key.as_str() {
                    "username" => &mut username,
                    "password" => &mut password,
                    other => {
                        return Err(format!(
                            "has {}, which fhirbox does not act on; only username and password are taken",
                            shown(other)
                        ))
                    }
                };
                if slot.replace(value).is_some() {
                    return Err(format!("repeats option {key}"));
                }
            }
            None => return Err("must end with ;".into()),
            _ => return Err("has something other than key=value options".into()),
        }
    }
    if tokens.next().is_some() {
        return Err("holds more than one login module; Kafka takes exactly one".into());
    }
    let username = username
        .filter(|u| !u.is_empty())
        .ok_or("has no username")?;
    let password = password
        .filter(|p| !p.is_empty())
        .ok_or("has no password")?;
    Ok(Jaas {
        module,
        username,
        password: SecretString::from(password),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn plain_and_scram_with_quotes_and_escapes() {
        let plain = parse(
            r#"org.apache.kafka.common.security.plain.PlainLoginModule required username="alice" password="p\"a\\ss;word";"#,
        )
        .unwrap();
        assert_eq!(plain.module, Module::Plain);
        assert_eq!(plain.username, "alice");
        assert_eq!(plain.password.expose_secret(), r#"p"a\ss;word"#);
        let scram = parse(
            "org.apache.kafka.common.security.scram.ScramLoginModule required\n  username=svc\n  password=\"s3cret\";\n",
        )
        .unwrap();
        assert_eq!(scram.module, Module::Scram);
        assert_eq!(scram.username, "svc");
        assert!(!format!("{scram:?}").contains("s3cret"));
        // Confluent's snippets use single quotes.
        let single = parse(
            "org.apache.kafka.common.security.plain.PlainLoginModule required username='KEY' password='SE CRET';",
        )
        .unwrap();
        assert_eq!(single.password.expose_secret(), "SE CRET");
    }

    #[test]
    fn refusals_name_the_problem_and_never_the_password() {
        let problem = |text: &str| parse(text).unwrap_err();
        assert!(problem(
            r#"org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"#
        )
        .contains("OAuthBearerLoginModule, which only a Java client can run"));
        assert!(problem(
            r#"com.sun.security.auth.module.Krb5LoginModule required useKeyTab=true;"#
        )
        .contains("Krb5LoginModule"));
        let scram = "org.apache.kafka.common.security.scram.ScramLoginModule";
        for (text, needle) in [
            (
                format!(r#"{scram} required username="u" password="hunter2""#),
                "must end with ;",
            ),
            (
                format!(r#"{scram} username="u" password="hunter2";"#),
                "control flag",
            ),
            (format!(r#"{scram} required username="u";"#), "no password"),
            (
                format!(r#"{scram} required password="hunter2";"#),
                "no username",
            ),
            (
                format!(r#"{scram} required username="u" password="hunter2" tokenauth=true;"#),
                "tokenauth",
            ),
            (
                format!(r#"{scram} required username="u" password="hunter2" password="x";"#),
                "repeats",
            ),
            (
                format!(r#"{scram} required username="u" password="hunter2"; {scram} required;"#),
                "exactly one",
            ),
            (
                format!(r#"{scram} required username="u" password="hunter2;"#),
                "never closed",
            ),
            (
                "PlainLoginModule required;".to_owned(),
                "must start with a login module class",
            ),
            (
                format!("{scram} required username=u password=hunter2 secret;"),
                "does not know",
            ),
            (
                format!("{scram} required username=u password=hunter2 // note\n;"),
                "comment",
            ),
        ] {
            let got = problem(&text);
            assert!(got.contains(needle), "{text}: {got}");
            assert!(!got.contains("hunter2"), "{got}");
        }
    }
}
