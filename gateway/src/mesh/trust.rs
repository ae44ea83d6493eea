//! The mesh's trust: the CA that signs ([`MeshCa`], swapped whole) and the roots every
//! peer is verified against ([`TrustAnchors`]: the CA's own root and
//! `--mesh-trust-bundle`'s, two during a rotation). Both are read again when their files
//! change, so rotating the CA needs no restart: add the new root to the bundle, wait
//! until every sidecar has it (one certificate lifetime: sidecars take the bundle with
//! each certificate), switch the CA, wait one lifetime again, remove the old root
//! (docs/security.md). A change that does not load leaves everything as it was, logged.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use berth_common::identity::SpiffeId;
use berth_common::mtls::{CertSlot, TrustAnchors};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::CaSource;
use super::ca::{CaError, MeshCa, read};

/// How often the files are looked at.
const WATCH_EVERY: Duration = Duration::from_secs(2);

pub(crate) struct MeshTrust {
    ca: ArcSwap<MeshCa>,
    pub anchors: TrustAnchors,
    source: CaSource,
    bundle: Option<PathBuf>,
    trust_domain: String,
}

/// The CA and the roots, as the files say now.
fn load(
    source: &CaSource,
    bundle: Option<&Path>,
    trust_domain: &str,
) -> Result<(MeshCa, Vec<CertificateDer<'static>>), CaError> {
    let ca = match source {
        CaSource::Files { cert, key } => MeshCa::load(cert, key, trust_domain)?,
        CaSource::Dev(dir) => MeshCa::dev(dir, trust_domain)?,
    };
    let mut roots: Vec<CertificateDer<'static>> = match bundle {
        Some(path) => {
            let pem = read(path)?;
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .take(berth_common::mtls::MAX_ROOTS + 1)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CaError::BadCa(format!("--mesh-trust-bundle: bad PEM: {e}")))?;
            for c in &certs {
                let is_ca = berth_common::identity::summarize(c).map(|s| s.is_ca).unwrap_or(false);
                if !is_ca {
                    return Err(CaError::BadCa(
                        "--mesh-trust-bundle holds a certificate that is not a CA".into(),
                    ));
                }
            }
            certs
        }
        None => Vec::new(),
    };
    // The CA's own root is always trusted.
    if !roots.contains(ca.anchor()) {
        roots.push(ca.anchor().clone());
    }
    Ok((ca, roots))
}

/// What the files hold now, to tell a change (inline PEMs never change).
fn fingerprint(source: &CaSource, bundle: Option<&Path>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let files: Vec<PathBuf> = match source {
        CaSource::Files { cert, key } => vec![cert.clone(), key.clone()],
        CaSource::Dev(dir) => vec![dir.join("ca.crt"), dir.join("ca.key")],
    };
    for f in files.iter().map(PathBuf::as_path).chain(bundle) {
        std::fs::read(f).ok().hash(&mut h);
    }
    h.finish()
}

impl MeshTrust {
    pub(crate) fn load(source: &CaSource, bundle: Option<&Path>, trust_domain: &str) -> Result<MeshTrust, CaError> {
        let (ca, roots) = load(source, bundle, trust_domain)?;
        let anchors = TrustAnchors::from_certs(&roots).map_err(|e| CaError::BadCa(e.to_string()))?;
        Ok(MeshTrust {
            ca: ArcSwap::from_pointee(ca),
            anchors,
            source: source.clone(),
            bundle: bundle.map(Path::to_path_buf),
            trust_domain: trust_domain.to_string(),
        })
    }

    /// The CA that signs now.
    pub(crate) fn ca(&self) -> Arc<MeshCa> {
        self.ca.load_full()
    }

    pub(crate) fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Every root, PEM: what sidecars get with each certificate.
    pub(crate) fn bundle_pem(&self) -> String {
        self.anchors
            .certs()
            .iter()
            .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.as_ref())))
            .collect()
    }

    /// Issue the gateway's own certificate from the CA that signs now.
    fn issue_own(&self, slot: &CertSlot, lifetime: Duration) {
        let ca = self.ca();
        let issued = SpiffeId::gateway(ca.trust_domain())
            .map_err(|e| CaError::Sign(e.to_string()))
            .and_then(|me| ca.issue_local(&me, lifetime))
            .and_then(|(issued, key)| MeshCa::certified_key(&issued, &key));
        match issued {
            Ok(k) => slot.set(k),
            Err(e) => tracing::error!(error = %e, "cannot issue the gateway's own certificate"),
        }
    }

    /// Keep the gateway's own certificate fresh (reissued at 70 % of its lifetime, with
    /// jitter), and follow the CA and bundle files: on a change that loads, trust the
    /// new roots and sign with the new CA from the next certificate on, the gateway's own
    /// at once.
    pub(crate) async fn run(self: Arc<Self>, slot: Arc<CertSlot>, lifetime: Duration) {
        // The first one was issued at start.
        let renew_in = || {
            lifetime
                .mul_f64(0.7 - 0.05 * fastrand::f64())
                .max(Duration::from_secs(1))
        };
        let mut seen = fingerprint(&self.source, self.bundle.as_deref());
        let mut next_own = tokio::time::Instant::now() + renew_in();
        loop {
            if tokio::time::Instant::now() >= next_own {
                self.issue_own(&slot, lifetime);
                next_own = tokio::time::Instant::now() + renew_in();
            }
            tokio::time::sleep(WATCH_EVERY.min(next_own.saturating_duration_since(tokio::time::Instant::now()))).await;
            let now = fingerprint(&self.source, self.bundle.as_deref());
            if now == seen {
                continue;
            }
            seen = now;
            match self.reload() {
                Ok(()) => {
                    self.issue_own(&slot, lifetime);
                    next_own = tokio::time::Instant::now() + renew_in();
                }
                Err(e) => {
                    tracing::error!(error = %e, "mesh CA files changed but do not load; keeping the current CA and roots")
                }
            }
        }
    }

    fn reload(&self) -> Result<(), CaError> {
        let (ca, roots) = load(&self.source, self.bundle.as_deref(), &self.trust_domain)?;
        self.anchors
            .replace(&roots)
            .map_err(|e| CaError::BadCa(e.to_string()))?;
        let subjects: Vec<String> = roots
            .iter()
            .filter_map(|c| berth_common::identity::summarize(c).ok().map(|s| s.subject))
            .collect();
        let signer = berth_common::identity::summarize(ca.anchor())
            .map(|s| s.subject)
            .unwrap_or_default();
        self.ca.store(Arc::new(ca));
        tracing::info!(?subjects, root = %signer, "mesh CA and trust bundle reloaded");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::mesh::ca::new_root;

    fn files(dir: &Path, cert: &str, key: &str, bundle: &str) -> (CaSource, PathBuf) {
        std::fs::write(dir.join("ca.crt"), cert).unwrap();
        std::fs::write(dir.join("ca.key"), key).unwrap();
        std::fs::write(dir.join("bundle.pem"), bundle).unwrap();
        (
            CaSource::Files {
                cert: dir.join("ca.crt"),
                key: dir.join("ca.key"),
            },
            dir.join("bundle.pem"),
        )
    }

    #[test]
    fn a_rotation_swaps_the_signer_and_the_roots_and_refuses_what_does_not_fit() {
        berth_common::tls::install_crypto_provider();
        let dir = std::env::temp_dir().join(format!("berth-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (old, old_key) = new_root("old").unwrap();
        let (new, new_key) = new_root("new").unwrap();
        let (source, bundle) = files(&dir, &old, &old_key, &old);
        let trust = MeshTrust::load(&source, Some(&bundle), "berth.local").unwrap();
        let before = fingerprint(&source, Some(&bundle));
        assert_eq!(trust.anchors.certs().len(), 1);

        // Step 1: both roots trusted, the old CA still signs.
        files(&dir, &old, &old_key, &format!("{old}{new}"));
        assert_ne!(fingerprint(&source, Some(&bundle)), before);
        trust.reload().unwrap();
        assert_eq!(trust.anchors.certs().len(), 2);
        assert_eq!(trust.bundle_pem().matches("BEGIN CERTIFICATE").count(), 2);
        let signer = |t: &MeshTrust| berth_common::identity::summarize(t.ca().anchor()).unwrap().subject;
        assert_eq!(signer(&trust), "CN=old");

        // Step 2: the new CA signs; the bundle keeps both.
        files(&dir, &new, &new_key, &format!("{old}{new}"));
        trust.reload().unwrap();
        assert_eq!(signer(&trust), "CN=new");
        assert_eq!(trust.anchors.certs().len(), 2);

        // A key that is not the certificate's, or a leaf in the bundle: nothing changes.
        files(&dir, &new, &old_key, &new);
        let err = trust.reload().unwrap_err().to_string();
        assert!(err.contains("does not belong"), "{err}");
        let me = SpiffeId::gateway("berth.local").unwrap();
        let (leaf, _) = trust.ca().issue_local(&me, Duration::from_secs(60)).unwrap();
        files(&dir, &new, &new_key, &leaf.chain_pem);
        assert!(trust.reload().unwrap_err().to_string().contains("not a CA"));
        assert_eq!((signer(&trust).as_str(), trust.anchors.certs().len()), ("CN=new", 2));

        // Step 3: the old root removed; the signer's own root always stays.
        files(&dir, &new, &new_key, &new);
        trust.reload().unwrap();
        assert_eq!(trust.anchors.certs().len(), 1);
        files(&dir, &new, &new_key, &old);
        trust.reload().unwrap();
        assert_eq!(
            trust.anchors.certs().len(),
            2,
            "a bundle without the signer's root gets it added"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
