//! Obtaining one certificate: the account (restored from storage, or created), an order
//! for the names, each authorization's challenge put where the entrypoints answer it
//! and then announced, the order polled until ready, a CSR for a new key of the
//! resolver's type, and the chain polled until issued; and, for renewals, the CA's
//! renewal window (ARI, RFC 9773). With a shared table, each
//! challenge is published there too, before the server is told, so that any replica
//! answers it. DNS-01 puts a TXT record in Route 53 instead ([`super::route53`]). The
//! challenges are withdrawn whatever the outcome.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::Client;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::challenges::{Challenges, alpn_certificate, to_hex};
use super::route53::{Records, Route53};
use super::table::Table;
use super::{KeyType, ResolverSettings};

/// The largest answer read from the ACME server (a certificate chain is a few KiB).
const MAX_ANSWER: usize = 1024 * 1024;
/// How long an order may take to be validated, then to be issued.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);

/// The ACME client's HTTP: the gateway's rustls client, trusting the system's roots and
/// the resolver's `caCertificates`.
struct Http(Client<berth_common::upstream::Connector, BodyWrapper<Bytes>>);

impl HttpClient for Http {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.0.request(req);
        Box::pin(async move {
            match tokio::time::timeout(Duration::from_secs(30), fut).await {
                // Bounded: the CA server is outside input too.
                Ok(Ok(resp)) => Ok(BytesResponse::from(
                    resp.map(|b| http_body_util::Limited::new(b, MAX_ANSWER)),
                )),
                // With its causes: "client error (Connect)" alone hides a TLS refusal.
                Ok(Err(e)) => Err(instant_acme::Error::Other(berth_common::error::chain_text(&e).into())),
                Err(_) => Err(instant_acme::Error::Str("no answer from the ACME server within 30 s")),
            }
        })
    }
}

fn http(settings: &ResolverSettings) -> Result<Box<dyn HttpClient>, String> {
    let mut roots = berth_common::upstream::trust_roots(None).map_err(|e| e.to_string())?;
    for path in &settings.ca_certificates {
        let pem = std::fs::read(path).map_err(|e| format!("caCertificates {}: {e}", path.display()))?;
        let certs = berth_common::tls::certs_from_pem(&pem, &path.display().to_string()).map_err(|e| e.to_string())?;
        roots.add_parsable_certificates(certs);
    }
    let mut connector = berth_common::upstream::Connector::new(Duration::from_secs(10), roots);
    if let Some(name) = &settings.ca_server_name {
        connector = connector.with_server_name(name.clone());
    }
    let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    Ok(Box::new(Http(client)))
}

fn acme_err(e: instant_acme::Error) -> String {
    e.to_string()
}

/// The stored account, without ever making one.
pub(super) async fn restore(settings: &ResolverSettings, credentials: &serde_json::Value) -> Result<Account, String> {
    let creds = serde_json::from_value::<instant_acme::AccountCredentials>(credentials.clone())
        .map_err(|e| format!("the stored account: {e}"))?;
    Account::builder_with_http(http(settings)?)
        .from_credentials(creds)
        .await
        .map_err(acme_err)
}

/// The resolver's account: from `credentials` (stored), else a new one. The
/// credentials to store when new.
pub(super) async fn account(
    settings: &ResolverSettings,
    credentials: Option<&serde_json::Value>,
) -> Result<(Account, Option<serde_json::Value>), String> {
    if let Some(c) = credentials
        && let Ok(creds) = serde_json::from_value::<instant_acme::AccountCredentials>(c.clone())
    {
        match Account::builder_with_http(http(settings)?)
            .from_credentials(creds)
            .await
        {
            Ok(a) => return Ok((a, None)),
            Err(e) => {
                tracing::warn!(resolver = %settings.name, error = %e, "the stored ACME account is not usable; creating one")
            }
        }
    }
    let contact = settings.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = settings
        .eab
        .as_ref()
        .map(|(kid, key)| instant_acme::ExternalAccountKey::new(kid.clone(), key));
    let (account, creds) = Account::builder_with_http(http(settings)?)
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.ca_server.clone(),
            eab.as_ref(),
        )
        .await
        .map_err(acme_err)?;
    let creds = serde_json::to_value(&creds).map_err(|e| e.to_string())?;
    Ok((account, Some(creds)))
}

/// Where challenges are answered: the entrypoints ([`Challenges`]), the shared table
/// for the other replicas, Route 53 for DNS-01.
#[derive(Clone, Copy)]
pub(super) struct Solvers<'a> {
    pub challenges: &'a Challenges,
    pub shared: Option<&'a Table>,
    pub dns: Option<&'a Route53>,
}

/// A certificate for `names`: the PEM chain and the PEM key. `replaces` is the one it
/// renews on the CA's renewal information (RFC 9773 section 5: the CA may exempt such
/// orders from rate limits); a CA that does not take it gets the order without.
pub(super) async fn obtain(
    account: &Account,
    names: &[String],
    settings: &ResolverSettings,
    solvers: Solvers<'_>,
    replaces: Option<&rustls_pki_types::CertificateDer<'_>>,
) -> Result<(String, String), String> {
    let Solvers {
        challenges,
        shared,
        dns,
    } = solvers;
    // A wildcard is the identifier `*.name` (RFC 8555 section 7.1.3).
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let replaced = replaces.and_then(|leaf| instant_acme::CertificateIdentifier::try_from(leaf).ok());
    let mut order = match replaced {
        Some(id) => match account.new_order(&NewOrder::new(&ids).replaces(id)).await {
            Ok(o) => o,
            Err(e) => {
                tracing::info!(resolver = %settings.name, error = %e, "the CA did not take `replaces`; ordering without");
                account.new_order(&NewOrder::new(&ids)).await.map_err(acme_err)?
            }
        },
        None => account.new_order(&NewOrder::new(&ids)).await.map_err(acme_err)?,
    };
    let mut pending: Vec<Pending> = Vec::new();
    let mut records = Records::default();
    let announced = announce(&mut order, settings, solvers, &mut pending, &mut records).await;
    let result = match announced {
        Ok(()) => finish(&mut order, names, settings.key_type).await,
        Err(e) => Err(e),
    };
    if let Some(dns) = dns {
        dns.cleanup(records).await;
    }
    for p in &pending {
        challenges.remove(&p.token, &p.name);
        if let Some(t) = shared
            && let Err(e) = t.remove_challenge(p.kind, &p.shared_key).await
        {
            tracing::debug!(error = %e, "a shared ACME challenge was not withdrawn (it expires)");
        }
    }
    result
}

/// A challenge put up for the server, to withdraw afterwards.
struct Pending {
    token: String,
    name: String,
    /// `http` or `alpn`, and the key in the shared table (the token, or the name).
    kind: &'static str,
    shared_key: String,
}

/// Answer every pending authorization's challenge and tell the server.
async fn announce(
    order: &mut instant_acme::Order,
    settings: &ResolverSettings,
    solvers: Solvers<'_>,
    pending: &mut Vec<Pending>,
    records: &mut Records,
) -> Result<(), String> {
    let Solvers {
        challenges,
        shared,
        dns,
    } = solvers;
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let mut authz = next.map_err(acme_err)?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("an authorization is {other:?}")),
        }
        let offered = |t: &ChallengeType| authz.challenges.iter().any(|c| &c.r#type == t);
        // lego's order (Traefik's): TLS-ALPN-01, then HTTP-01, then DNS-01 (the only
        // one for a wildcard).
        let kind = if settings.tls_challenge && offered(&ChallengeType::TlsAlpn01) {
            ChallengeType::TlsAlpn01
        } else if settings.http_challenge.is_some() && offered(&ChallengeType::Http01) {
            ChallengeType::Http01
        } else if dns.is_some() && offered(&ChallengeType::Dns01) {
            ChallengeType::Dns01
        } else {
            return Err("the server offers none of the resolver's challenges (http-01, tls-alpn-01, dns-01)".into());
        };
        let Some(mut challenge) = authz.challenge(kind.clone()) else {
            return Err("the challenge went missing".into());
        };
        let name = challenge.identifier().to_string();
        let key_authorization = challenge.key_authorization();
        if let (ChallengeType::Dns01, Some(dns)) = (&kind, dns) {
            dns.present(records, &name, &key_authorization.dns_value()).await?;
            // `delayBeforeCheck`: more time for the records to reach every resolver.
            if let Some(d) = &settings.dns_challenge {
                tokio::time::sleep(d.delay_before_check).await;
            }
            challenge.set_ready().await.map_err(acme_err)?;
            continue;
        }
        let (kind, shared_key, shared_value) = match kind {
            ChallengeType::TlsAlpn01 => {
                let digest = key_authorization.digest();
                challenges.put_alpn(&name, alpn_certificate(&name, digest.as_ref())?);
                ("alpn", name.to_ascii_lowercase(), to_hex(digest.as_ref()))
            }
            _ => {
                challenges.put_http(&challenge.token, key_authorization.as_str());
                ("http", challenge.token.clone(), key_authorization.as_str().to_string())
            }
        };
        pending.push(Pending {
            token: challenge.token.clone(),
            name,
            kind,
            shared_key: shared_key.clone(),
        });
        if let Some(t) = shared {
            t.put_challenge(kind, &shared_key, &shared_value).await?;
        }
        challenge.set_ready().await.map_err(acme_err)?;
    }
    Ok(())
}

/// A suggested renewal window (RFC 9773) and when to ask again.
pub(super) struct Window {
    pub start: std::time::SystemTime,
    pub end: std::time::SystemTime,
    pub retry_after: Duration,
}

/// The CA's renewal window for the certificate `leaf`; `None` when the CA has no
/// renewal information.
pub(super) async fn renewal_window(
    account: &Account,
    leaf: &rustls_pki_types::CertificateDer<'_>,
) -> Result<Option<Window>, String> {
    let id = instant_acme::CertificateIdentifier::try_from(leaf)
        .map_err(|e| format!("the certificate's identifier: {e}"))?;
    match account.renewal_info(&id).await {
        Ok((info, retry_after)) => {
            let (start, end) = (info.suggested_window.start, info.suggested_window.end);
            if end < start {
                return Err("the renewal window ends before it starts".into());
            }
            Ok(Some(Window {
                start: start.into(),
                end: end.into(),
                retry_after,
            }))
        }
        Err(instant_acme::Error::Unsupported(_)) => Ok(None),
        Err(e) => Err(acme_err(e)),
    }
}

/// Wait for validation, send the CSR, wait for the chain.
async fn finish(
    order: &mut instant_acme::Order,
    names: &[String],
    key_type: KeyType,
) -> Result<(String, String), String> {
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(ORDER_TIMEOUT);
    let status = order.poll_ready(&retries).await.map_err(acme_err)?;
    if status != OrderStatus::Ready {
        let state = order.state();
        let why = state
            .error
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "no reason given".into());
        return Err(format!("the order is {status:?}: {why}"));
    }
    let alg = match key_type {
        KeyType::Ec256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::Ec384 => &rcgen::PKCS_ECDSA_P384_SHA384,
    };
    let key = rcgen::KeyPair::generate_for(alg).map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    order.finalize_csr(csr.der()).await.map_err(acme_err)?;
    let chain = order.poll_certificate(&retries).await.map_err(acme_err)?;
    Ok((chain, key.serialize_pem()))
}
