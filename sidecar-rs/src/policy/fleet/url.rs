//! The Redis URL as the sidecar keeps it: it can carry a password
//! (`rediss://user:password@host/0`), so its `Debug` (what a `{:?}` of the
//! CLI or the server's config prints) shows the password as `***`.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

/// `SIDECAR_REDIS_URL`. Whether it parses is [`super::Fleet::start`]'s
/// question (its error never repeats the URL); this only keeps it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RedisUrl {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match url::Url::parse(&self.0) {
            Ok(mut parsed) => {
                if parsed.password().is_some() {
                    // Only fails for URLs that cannot have a password: this one has.
                    let _ = parsed.set_password(Some("***"));
                }
                f.debug_tuple("RedisUrl").field(&parsed.as_str()).finish()
            }
            // It may still hold a password somewhere: show nothing of it.
            Err(_) => f.write_str("RedisUrl(<does not parse>)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(url: &str) -> String {
        format!("{:?}", url.parse::<RedisUrl>().unwrap())
    }

    #[test]
    fn debug_never_shows_the_password() {
        let secret = "s3cr%40t-Password";
        let printed = shown(&format!("rediss://tandem:{secret}@redis.internal:6380/0"));
        assert_eq!(
            printed,
            r#"RedisUrl("rediss://tandem:***@redis.internal:6380/0")"#
        );
        // A password alone (Redis's `requirepass`), and a URL that does not parse.
        assert!(!shown(&format!("redis://:{secret}@redis/0")).contains("s3cr"));
        assert_eq!(
            shown(&format!("redis://:{secret}@[bad")),
            "RedisUrl(<does not parse>)"
        );
        // Nothing to hide: shown as given.
        assert_eq!(
            shown("redis://redis:6379/0"),
            r#"RedisUrl("redis://redis:6379/0")"#
        );
    }

    #[test]
    fn the_url_itself_is_kept_as_given() {
        let url = "redis://user:p%40ss@host/1";
        assert_eq!(url.parse::<RedisUrl>().unwrap().as_str(), url);
    }
}
