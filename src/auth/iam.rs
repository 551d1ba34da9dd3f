//! IAM authentication tokens for ElastiCache and MemoryDB: a SigV4-presigned `connect` URL without
//! its scheme, sent as `AUTH <user> <token>`. The signature comes from the AWS SDK's own signer
//! (`aws-sigv4`) and the credentials from the SDK's default chain; nothing of SigV4 is written
//! here, so the token is what AWS's own clients would send.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::default_provider::region::DefaultRegionChain;
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials as _;
use aws_credential_types::provider::error::CredentialsError;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::config::Secret;
use crate::limits::{CREDENTIALS_TIMEOUT, IAM_TOKEN_LIFETIME};

/// `service` of [auth.iam].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    ElastiCache,
    MemoryDb,
}

impl Service {
    /// The SigV4 signing name, as it appears in the token's credential scope.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::ElastiCache => "elasticache",
            Service::MemoryDb => "memorydb",
        }
    }

    /// `elasticache` or `memorydb` (any case); anything else is not a service that takes IAM
    /// tokens.
    pub fn parse(s: &str) -> Option<Service> {
        match s.trim().to_ascii_lowercase().as_str() {
            "elasticache" => Some(Service::ElastiCache),
            "memorydb" => Some(Service::MemoryDb),
            _ => None,
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a token is signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// Replication group id (node-based ElastiCache), cache name (serverless) or MemoryDB cluster
    /// name: the token's host. Never the endpoint's DNS name.
    pub cache: String,
    /// The user id to AUTH as.
    pub user: String,
    pub region: String,
    pub service: Service,
    /// Serverless ElastiCache: the token names `ResourceType=ServerlessCache`.
    pub serverless: bool,
}

impl TokenRequest {
    /// Whether a token for this request can be right at all. A token for a mistyped name is
    /// signed without complaint and refused by the server as `WRONGPASS`, which says nothing
    /// about why; this says what is wrong before anything is signed.
    pub fn validate(&self) -> Result<(), String> {
        let cache = &self.cache;
        if cache.contains('.') {
            return Err(format!(
                "cache `{cache}` looks like an endpoint; the token is signed for the replication \
                 group id, serverless cache name or MemoryDB cluster name (e.g. `my-rg`), not the \
                 DNS name"
            ));
        }
        if cache.is_empty() || !cache.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!(
                "cache `{cache}` is not a replication group id, serverless cache name or MemoryDB \
                 cluster name (letters, digits and hyphens)"
            ));
        }
        if self.user.is_empty()
            || self
                .user
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "user `{}` is not a user id (no spaces or control characters, not empty)",
                self.user.escape_debug()
            ));
        }
        let region = &self.region;
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!(
                "region `{}` is not an AWS region name (e.g. us-east-1)",
                region.escape_debug()
            ));
        }
        Ok(())
    }
}

/// A signed token: the secret sent as `AUTH <user> <token>`, and until when the server accepts it
/// (15 minutes after signing, or sooner when the credentials expire sooner).
#[derive(Debug, Clone)]
pub struct Token {
    pub secret: Secret,
    pub signed: SystemTime,
    pub expires: SystemTime,
    /// Whose credentials signed it, for logs: e.g. `access key AKIA…ABCD (Environment)`. Never
    /// the secret access key or the session token.
    pub identity: String,
}

/// Why no token could be had. Display texts are what a client sees after
/// `-ERR ectunnel: auth <upstream>: ` and what the log says: each says what to do. None includes a
/// secret access key or a session token.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IamError {
    /// The chain found no credentials anywhere.
    #[error(
        "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a \
         profile with AWS_PROFILE, or give the instance, task or pod an IAM role): {0}"
    )]
    NoCredentials(String),
    /// Credentials whose expiry has passed.
    #[error("{0}")]
    Expired(String),
    /// The credentials provider was throttled: keep the old token, retry later.
    #[error("the AWS credentials provider is throttling requests (retrying later): {0}")]
    Throttled(String),
    /// Anything else from the provider or the signer.
    #[error("{0}")]
    Failed(String),
}

impl IamError {
    /// For a metric label.
    pub fn result_label(&self) -> &'static str {
        match self {
            IamError::NoCredentials(_) => "no_credentials",
            IamError::Expired(_) => "expired",
            IamError::Throttled(_) => "throttled",
            IamError::Failed(_) => "error",
        }
    }
}

impl From<CredentialsError> for IamError {
    fn from(e: CredentialsError) -> IamError {
        let reason = chain(&e);
        let lower = reason.to_ascii_lowercase();
        if ["throttl", "rate exceeded", "too many requests"]
            .iter()
            .any(|t| lower.contains(t))
        {
            return IamError::Throttled(reason);
        }
        match e {
            CredentialsError::CredentialsNotLoaded(_) => IamError::NoCredentials(reason),
            CredentialsError::ProviderTimedOut(_) => IamError::Failed(format!(
                "the AWS credentials provider did not answer in time (is the instance metadata \
                 service, the container credentials endpoint or STS reachable?): {reason}"
            )),
            CredentialsError::InvalidConfiguration(_) => IamError::Failed(format!(
                "the AWS configuration is invalid (check ~/.aws/config, ~/.aws/credentials and \
                 the AWS_* variables): {reason}"
            )),
            _ => IamError::Failed(format!("cannot get AWS credentials: {reason}")),
        }
    }
}

/// An error and its sources, `outer: inner: …`: the SDK's top-level texts ("an error occurred
/// while loading credentials") say nothing on their own; the reason is in the sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let s_text = s.to_string();
        if !text.ends_with(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        next = s.source();
    }
    text
}

/// Characters left as they are in the `User` value: RFC 3986 unreserved, as SigV4 encodes.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Signs with the given AWS credentials at `at` (pure, no I/O): the presigned GET
/// `https://<cache lower-cased>/?Action=connect&User=<user>[&ResourceType=ServerlessCache]` with
/// X-Amz-Expires=900, signed headers `host`, empty-payload hash, and the scheme stripped.
pub fn presign(req: &TokenRequest, creds: &Credentials, at: SystemTime) -> Result<Token, IamError> {
    req.validate().map_err(IamError::Failed)?;
    let identity_text = identity(creds);
    let lifetime_end = at.checked_add(IAM_TOKEN_LIFETIME).unwrap_or(at);
    let expires = match creds.expiry() {
        Some(expiry) if expiry <= at => {
            return Err(IamError::Expired(format!(
                "the AWS credentials ({identity_text}) expired at {}: renew them (e.g. `aws sso \
                 login`, or a fresh session for the role)",
                humantime::format_rfc3339_seconds(expiry)
            )));
        }
        Some(expiry) => expiry.min(lifetime_end),
        None => lifetime_end,
    };
    let url = format!(
        "https://{}/?Action=connect&User={}{}",
        req.cache.to_ascii_lowercase(),
        utf8_percent_encode(&req.user, QUERY_VALUE),
        if req.serverless {
            "&ResourceType=ServerlessCache"
        } else {
            ""
        }
    );
    let signed = sign_url(&url, req, creds, at)
        .map_err(|e| IamError::Failed(format!("cannot sign the IAM token: {e}")))?;
    let token = signed
        .strip_prefix("https://")
        .ok_or_else(|| IamError::Failed(format!("the signer returned `{url}` with no scheme")))?;
    Ok(Token {
        secret: Secret::new(token),
        signed: at,
        expires,
        identity: identity_text,
    })
}

/// `url` presigned by aws-sigv4 (query parameters added the way the SDK adds them).
fn sign_url(
    url: &str,
    req: &TokenRequest,
    creds: &Credentials,
    at: SystemTime,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(IAM_TOKEN_LIFETIME);
    let identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&req.region)
        .name(req.service.as_str())
        .time(at)
        .settings(settings)
        .build()?
        .into();
    let signable = SignableRequest::new("GET", url, std::iter::empty(), SignableBody::Bytes(&[]))?;
    let (instructions, _signature) = sign(signable, &params)?.into_parts();
    let mut request = http::Request::builder().uri(url).body(())?;
    instructions.apply_to_request_http1x(&mut request);
    Ok(request.uri().to_string())
}

/// `access key AKIA…ABCD (Environment)`: enough to tell which credentials were used (the prefix
/// says long-term `AKIA` or temporary `ASIA`), not enough to be one.
fn identity(creds: &Credentials) -> String {
    let key: Vec<char> = creds.access_key_id().chars().collect();
    let tail: String = key[key.len().saturating_sub(4)..].iter().collect();
    let masked = match key.len() {
        0..=4 => "…".to_owned(),
        5..=15 => format!("…{tail}"),
        _ => format!("{}…{tail}", key[..4].iter().collect::<String>()),
    };
    match provider_name(creds) {
        Some(p) => format!("access key {masked} ({p})"),
        None => format!("access key {masked}"),
    }
}

/// `Credentials` keeps its provider's name private but prints it in `Debug` (which redacts the
/// secret): the only way to say where credentials came from.
fn provider_name(creds: &Credentials) -> Option<String> {
    let debug = format!("{creds:?}");
    let rest = debug.split_once("provider_name: \"")?.1;
    Some(rest.split_once('"')?.0.to_owned())
}

/// The region an ElastiCache / MemoryDB endpoint name is in, if the name says:
/// `master.rg.abc123.use1.cache.amazonaws.com` → us-east-1 (ElastiCache's abbreviations),
/// serverless `x.serverless.use1.cache.amazonaws.com` likewise, MemoryDB
/// `clustercfg.x.abc.memorydb.us-east-1.amazonaws.com` → us-east-1. None for anything else (IPs,
/// localhost, unknown shapes).
pub fn region_from_endpoint(host: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let suffix = if host.ends_with(".amazonaws.com.cn") {
        3
    } else if host.ends_with(".amazonaws.com") {
        2
    } else {
        return None;
    };
    let rest = &labels[..labels.len() - suffix];
    match rest {
        [_, .., short, "cache"] => expand_short_region(short),
        [_, .., "memorydb", region] if is_region(region) => Some((*region).to_owned()),
        _ => None,
    }
}

/// ElastiCache's short region names: geo, direction, number (`use1`, `apse2`, `euc1`, `cnn1`).
fn expand_short_region(short: &str) -> Option<String> {
    const GEOS: [&str; 10] = ["us", "eu", "ap", "sa", "ca", "me", "af", "il", "mx", "cn"];
    const DIRECTIONS: [(&str, &str); 9] = [
        ("ne", "northeast"),
        ("nw", "northwest"),
        ("se", "southeast"),
        ("sw", "southwest"),
        ("e", "east"),
        ("w", "west"),
        ("c", "central"),
        ("n", "north"),
        ("s", "south"),
    ];
    let geo = GEOS.iter().find(|g| short.starts_with(**g))?;
    let rest = &short[geo.len()..];
    let digits = rest.find(|c: char| c.is_ascii_digit())?;
    let (direction, number) = rest.split_at(digits);
    if !number.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (_, direction) = DIRECTIONS.iter().find(|(d, _)| *d == direction)?;
    Some(format!("{geo}-{direction}-{number}"))
}

/// `us-east-1`, `ap-southeast-2`, `us-gov-west-1`: letters in dashed parts, a number last.
fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts
            .last()
            .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
}

/// Where tokens come from. The default is [`AwsSource`]; tests put their own in its place.
pub trait TokenSource: Send + Sync + fmt::Debug {
    fn sign<'a>(
        &'a self,
        req: &'a TokenRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Token, IamError>> + Send + 'a>>;
}

/// The AWS SDK's default credentials chain, asked afresh for every token (env, profile, web
/// identity / IRSA, ECS/EKS container credentials, IMDSv2): a rotated key or a renewed role
/// session is used by the next token, with no cache of ours to go stale.
#[derive(Debug, Default)]
pub struct AwsSource {
    /// Built on first use: building it is async (it looks up the region for STS).
    chain: tokio::sync::OnceCell<DefaultCredentialsChain>,
}

impl AwsSource {
    /// The chain's credentials now, within [`CREDENTIALS_TIMEOUT`].
    pub async fn credentials(&self) -> Result<Credentials, IamError> {
        let ask = async {
            let chain = self
                .chain
                .get_or_init(|| DefaultCredentialsChain::builder().build())
                .await;
            chain.provide_credentials().await
        };
        match tokio::time::timeout(CREDENTIALS_TIMEOUT, ask).await {
            Ok(result) => result.map_err(IamError::from),
            Err(_) => Err(IamError::Failed(format!(
                "the AWS credentials chain gave no answer within {}s (is the instance metadata \
                 service, the container credentials endpoint or STS reachable?)",
                CREDENTIALS_TIMEOUT.as_secs()
            ))),
        }
    }
}

impl TokenSource for AwsSource {
    fn sign<'a>(
        &'a self,
        req: &'a TokenRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Token, IamError>> + Send + 'a>> {
        Box::pin(async move {
            let creds = self.credentials().await?;
            presign(req, &creds, SystemTime::now())
        })
    }
}

/// The region from the SDK's region chain (AWS_REGION, profile, IMDS), for when neither the config
/// nor the endpoint name gives one.
pub async fn sdk_region() -> Option<String> {
    let chain = DefaultRegionChain::builder().build();
    tokio::time::timeout(CREDENTIALS_TIMEOUT, chain.region())
        .await
        .ok()
        .flatten()
        .map(|r| r.as_ref().to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).expect("a test time")
    }

    fn creds(key: &str, secret: &str, session: Option<&str>) -> Credentials {
        Credentials::new(key, secret, session.map(str::to_owned), None, "test")
    }

    fn request(cache: &str, user: &str, region: &str, service: Service) -> TokenRequest {
        TokenRequest {
            cache: cache.into(),
            user: user.into(),
            region: region.into(),
            service,
            serverless: false,
        }
    }

    /// A token's host and its query parameters, decoded and sorted: signers order parameters
    /// differently, so tokens are compared this way, never as strings.
    fn parts(token: &str) -> (String, BTreeMap<String, String>) {
        let (host, query) = token.split_once("/?").expect("host/?query");
        let params = query
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("k=v");
                let v = percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .expect("utf-8");
                (k.to_owned(), v.into_owned())
            })
            .collect();
        (host.to_owned(), params)
    }

    fn sign_at(
        req: &TokenRequest,
        c: &Credentials,
        when: &str,
    ) -> (String, BTreeMap<String, String>) {
        let token = presign(req, c, at(when)).expect("signed");
        parts(token.secret.expose())
    }

    /// The public vector from AWS's ElastiCache IAM sample (docs/reference: IAM authentication).
    #[test]
    fn the_public_known_answer_vector() {
        let req = request(
            "my-replication-group-id",
            "my-user-id",
            "eu-west-1",
            Service::ElastiCache,
        );
        let (host, p) = sign_at(
            &req,
            &creds("fakeAccessKeyId", "fakeSecretKey", None),
            "2025-01-01T00:00:00Z",
        );
        assert_eq!(host, "my-replication-group-id");
        assert_eq!(
            p["X-Amz-Signature"],
            "9e361603d85874bce06114c6644725ed113e3b11ae6fa92efdf10c6bcf5de8d7"
        );
        let expected: BTreeMap<String, String> = [
            ("Action", "connect"),
            ("User", "my-user-id"),
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            (
                "X-Amz-Credential",
                "fakeAccessKeyId/20250101/eu-west-1/elasticache/aws4_request",
            ),
            ("X-Amz-Date", "20250101T000000Z"),
            ("X-Amz-Expires", "900"),
            ("X-Amz-SignedHeaders", "host"),
            (
                "X-Amz-Signature",
                "9e361603d85874bce06114c6644725ed113e3b11ae6fa92efdf10c6bcf5de8d7",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(p, expected);
    }

    /// Computed with botocore 1.43 (`python3 tests/data/iam/botocore_vectors.py` prints them):
    /// a session token, a serverless cache, and MemoryDB.
    #[test]
    fn botocore_vectors() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let session = creds(
            "ASIAEXAMPLEKEY123456",
            secret,
            Some("IQoJb3JpZ2luX2VjEXAMPLE/session+token=="),
        );
        let (_, p) = sign_at(
            &request("sess-cache", "app-user", "us-east-1", Service::ElastiCache),
            &session,
            "2024-06-30T12:34:56Z",
        );
        assert_eq!(
            p["X-Amz-Signature"],
            "59a05ee92505cf2eed4b682a32600085a047584973a86ceb76a46ec1c98e8ede"
        );
        assert_eq!(
            p["X-Amz-Security-Token"],
            "IQoJb3JpZ2luX2VjEXAMPLE/session+token=="
        );

        let key = creds("AKIAIOSFODNN7EXAMPLE", secret, None);
        let mut serverless = request(
            "my-serverless-cache",
            "iam-user-01",
            "ap-southeast-2",
            Service::ElastiCache,
        );
        serverless.serverless = true;
        let (_, p) = sign_at(&serverless, &key, "2025-03-15T08:00:00Z");
        assert_eq!(
            p["X-Amz-Signature"],
            "bd1b3c72ee6cb4d060900daa42947ce03ecb8f809ea9739b51e41695ff6ea2a3"
        );
        assert_eq!(p["ResourceType"], "ServerlessCache");

        let memorydb = request(
            "my-memorydb-cluster",
            "mdb-user",
            "eu-central-1",
            Service::MemoryDb,
        );
        let (_, p) = sign_at(&memorydb, &key, "2025-07-04T23:59:59Z");
        assert_eq!(
            p["X-Amz-Signature"],
            "090902a6be9b446bbee394170d9d29bec76478f0e344ed2008e1f76c4e35feb0"
        );
        assert_eq!(
            p["X-Amz-Credential"],
            "AKIAIOSFODNN7EXAMPLE/20250704/eu-central-1/memorydb/aws4_request"
        );
    }

    #[test]
    fn serverless_names_the_resource_type_and_node_based_does_not() {
        let c = creds("AKIDEXAMPLE", "secret", None);
        let mut req = request("c", "u", "us-east-1", Service::ElastiCache);
        let (_, p) = sign_at(&req, &c, "2025-01-01T00:00:00Z");
        assert!(!p.contains_key("ResourceType"));
        req.serverless = true;
        let (_, p) = sign_at(&req, &c, "2025-01-01T00:00:00Z");
        assert_eq!(p["ResourceType"], "ServerlessCache");
        assert!(!p.contains_key("X-Amz-Security-Token"));
    }

    #[test]
    fn the_cache_name_is_lower_cased_and_the_signature_with_it() {
        let c = creds("AKIDEXAMPLE", "secret", None);
        let upper = sign_at(
            &request("My-RG", "u", "us-east-1", Service::ElastiCache),
            &c,
            "2025-01-01T00:00:00Z",
        );
        let lower = sign_at(
            &request("my-rg", "u", "us-east-1", Service::ElastiCache),
            &c,
            "2025-01-01T00:00:00Z",
        );
        assert_eq!(upper.0, "my-rg");
        assert_eq!(upper, lower);
    }

    #[test]
    fn a_user_with_reserved_characters_is_encoded_and_signed_as_is() {
        let c = creds("AKIDEXAMPLE", "secret", None);
        let token = presign(
            &request("c", "a+b/c@d", "us-east-1", Service::ElastiCache),
            &c,
            at("2025-01-01T00:00:00Z"),
        )
        .unwrap();
        assert!(
            token.secret.expose().contains("User=a%2Bb%2Fc%40d&"),
            "{}",
            token.secret.expose()
        );
        assert_eq!(parts(token.secret.expose()).1["User"], "a+b/c@d");
    }

    #[test]
    fn a_token_lasts_15_minutes_or_until_the_credentials_expire() {
        let t0 = at("2025-01-01T00:00:00Z");
        let req = request("c", "u", "us-east-1", Service::ElastiCache);
        let long = presign(&req, &creds("AKIDEXAMPLE", "s", None), t0).unwrap();
        assert_eq!(long.signed, t0);
        assert_eq!(long.expires, t0 + Duration::from_secs(900));
        let soon = t0 + Duration::from_secs(300);
        let short = Credentials::new("ASIAEXAMPLE", "s", Some("t".into()), Some(soon), "test");
        assert_eq!(presign(&req, &short, t0).unwrap().expires, soon);
        let gone = Credentials::new("ASIAEXAMPLE", "s", Some("t".into()), Some(t0), "test");
        let err = presign(&req, &gone, t0).unwrap_err();
        assert!(matches!(err, IamError::Expired(_)), "{err:?}");
        assert_eq!(err.result_label(), "expired");
        assert!(err.to_string().contains("2025-01-01T00:00:00Z"), "{err}");
    }

    #[test]
    fn nothing_printable_shows_a_secret() {
        let c = creds(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI-SECRET",
            Some("SESSION-TOKEN-VALUE"),
        );
        let token = presign(
            &request("c", "u", "us-east-1", Service::ElastiCache),
            &c,
            at("2025-01-01T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(token.identity, "access key AKIA…MPLE (test)");
        let debug = format!("{token:?}");
        assert!(debug.contains("secret: ***"), "{debug}");
        for hidden in [
            "wJalrXUtnFEMI-SECRET",
            "SESSION-TOKEN-VALUE",
            "X-Amz-Signature",
            "AKIAIOSFODNN7EXAMPLE",
        ] {
            assert!(!debug.contains(hidden), "{hidden} in {debug}");
        }
        let short = creds("fakeAccessKeyId", "s", None);
        assert_eq!(identity(&short), "access key …eyId (test)");
        assert_eq!(identity(&creds("AK", "s", None)), "access key … (test)");
    }

    #[test]
    fn requests_that_cannot_be_right_are_refused_before_signing() {
        let c = creds("AKIDEXAMPLE", "s", None);
        for (cache, user, region, says) in [
            (
                "master.rg.abc123.use1.cache.amazonaws.com",
                "u",
                "us-east-1",
                "looks like an endpoint",
            ),
            ("", "u", "us-east-1", "letters, digits and hyphens"),
            ("a/b", "u", "us-east-1", "letters, digits and hyphens"),
            ("rg", "", "us-east-1", "user"),
            ("rg", "a b", "us-east-1", "user"),
            ("rg", "u", "", "region"),
            ("rg", "u", "US East", "region"),
        ] {
            let err = presign(
                &request(cache, user, region, Service::ElastiCache),
                &c,
                UNIX_EPOCH,
            )
            .unwrap_err();
            assert!(
                matches!(&err, IamError::Failed(m) if m.contains(says)),
                "{cache}/{user}/{region}: {err}"
            );
        }
    }

    #[test]
    fn regions_from_endpoint_names() {
        for (host, region) in [
            (
                "master.my-rg.abc123.use1.cache.amazonaws.com",
                Some("us-east-1"),
            ),
            (
                "replica.my-rg.abc123.usw2.cache.amazonaws.com",
                Some("us-west-2"),
            ),
            (
                "clustercfg.my-rg.abc123.euc1.cache.amazonaws.com",
                Some("eu-central-1"),
            ),
            (
                "my-rg.abc123.ng.0001.apse2.cache.amazonaws.com",
                Some("ap-southeast-2"),
            ),
            (
                "MASTER.RG.ABC.APNE1.CACHE.AMAZONAWS.COM.",
                Some("ap-northeast-1"),
            ),
            ("x.serverless.use1.cache.amazonaws.com", Some("us-east-1")),
            ("x.serverless.sae1.cache.amazonaws.com", Some("sa-east-1")),
            (
                "x.serverless.mxc1.cache.amazonaws.com",
                Some("mx-central-1"),
            ),
            ("a.b.eun1.cache.amazonaws.com", Some("eu-north-1")),
            ("a.b.cnn1.cache.amazonaws.com.cn", Some("cn-north-1")),
            (
                "clustercfg.x.abc.memorydb.us-east-1.amazonaws.com",
                Some("us-east-1"),
            ),
            (
                "clustercfg.x.abc.memorydb.ap-southeast-2.amazonaws.com",
                Some("ap-southeast-2"),
            ),
            ("localhost", None),
            ("127.0.0.1", None),
            ("::1", None),
            ("redis.example.com", None),
            ("cache.amazonaws.com", None),
            ("a.b.zzz1.cache.amazonaws.com", None),
            ("a.b.usx1.cache.amazonaws.com", None),
            ("a.b.use.cache.amazonaws.com", None),
            ("a.b.use1x.cache.amazonaws.com", None),
            ("x.memorydb.notaregion.amazonaws.com", None),
            ("elasticache.us-east-1.amazonaws.com", None),
        ] {
            assert_eq!(region_from_endpoint(host).as_deref(), region, "{host}");
        }
    }

    #[test]
    fn services_and_error_labels() {
        assert_eq!(Service::parse("elasticache"), Some(Service::ElastiCache));
        assert_eq!(Service::parse(" MemoryDB "), Some(Service::MemoryDb));
        assert_eq!(Service::parse("redis"), None);
        assert_eq!(Service::MemoryDb.as_str(), "memorydb");
        let not_loaded = IamError::from(CredentialsError::not_loaded(
            "no providers in chain provided credentials",
        ));
        assert_eq!(not_loaded.result_label(), "no_credentials");
        assert!(
            not_loaded.to_string().contains("AWS_ACCESS_KEY_ID"),
            "{not_loaded}"
        );
        assert!(
            not_loaded.to_string().contains("no providers in chain"),
            "{not_loaded}"
        );
        let throttled = IamError::from(CredentialsError::provider_error(
            "ThrottlingException: Rate exceeded",
        ));
        assert_eq!(throttled.result_label(), "throttled");
        let failed = IamError::from(CredentialsError::provider_error("connection refused"));
        assert_eq!(failed.result_label(), "error");
        assert!(
            failed.to_string().contains("connection refused"),
            "{failed}"
        );
        let timed_out =
            IamError::from(CredentialsError::provider_timed_out(Duration::from_secs(5)));
        assert_eq!(timed_out.result_label(), "error");
    }
}
