//! The storage file of a resolver, in Traefik's `acme.json` format: an object keyed by
//! resolver name, each with its `Account` and its `Certificates` (`domain.main`,
//! `domain.sans`, and the PEM chain and key, base64). A file Traefik wrote is read as
//! it is (its certificates are served and renewed; its account is replaced, since
//! Traefik's account keys are RSA and the ACME client's are P-256). Written whole (a
//! temporary file, then a rename), mode 0600 as Traefik wants it; bounded when read.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The largest storage file read.
const MAX_FILE: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Resolver {
    #[serde(rename = "Account", default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Account>,
    #[serde(rename = "Certificates", default)]
    pub certificates: Vec<Stored>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Account {
    #[serde(rename = "Email", default)]
    pub email: String,
    #[serde(rename = "Registration", default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Value>,
    /// instant-acme's account credentials (Traefik ignores the field).
    #[serde(rename = "BerthCredentials", default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Domain {
    pub main: String,
    #[serde(default)]
    pub sans: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Stored {
    pub domain: Domain,
    /// The PEM chain, base64.
    pub certificate: String,
    /// The PEM key, base64.
    pub key: String,
    #[serde(rename = "Store", default)]
    pub store: String,
}

impl Stored {
    pub(super) fn new(names: &[String], chain_pem: &str, key_pem: &str) -> Stored {
        let b64 = base64::engine::general_purpose::STANDARD;
        Stored {
            domain: Domain {
                main: names.first().cloned().unwrap_or_default(),
                sans: names.iter().skip(1).cloned().collect(),
            },
            certificate: b64.encode(chain_pem),
            key: b64.encode(key_pem),
            store: "default".into(),
        }
    }

    /// Its names, the main one first.
    pub(super) fn names(&self) -> Vec<String> {
        std::iter::once(&self.domain.main)
            .chain(&self.domain.sans)
            .map(|n| n.to_ascii_lowercase())
            .collect()
    }

    /// The chain and key as PEM.
    pub(super) fn pems(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let chain = b64
            .decode(self.certificate.trim())
            .map_err(|e| format!("certificate: {e}"))?;
        let key = b64.decode(self.key.trim()).map_err(|e| format!("key: {e}"))?;
        Ok((chain, key))
    }
}

fn read_all(path: &Path) -> Result<BTreeMap<String, Value>, String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
        Ok(m) if m.len() > MAX_FILE => return Err(format!("{}: larger than {MAX_FILE} bytes", path.display())),
        Ok(_) => {}
    }
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(BTreeMap::new());
    }
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The resolver `name`'s part of the file (empty when the file or the part is missing).
pub(super) fn load(path: &Path, name: &str) -> Result<Resolver, String> {
    match read_all(path)?.remove(name) {
        Some(v) => serde_json::from_value(v).map_err(|e| format!("{}: resolver {name}: {e}", path.display())),
        None => Ok(Resolver::default()),
    }
}

/// Writers of storage files, one at a time (resolvers may share a file).
static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Replace the resolver `name`'s part of the file, keeping the others'.
pub(super) fn save(path: &Path, name: &str, resolver: &Resolver) -> Result<(), String> {
    let _one_at_a_time = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = read_all(path).unwrap_or_default();
    all.insert(
        name.to_string(),
        serde_json::to_value(resolver).map_err(|e| e.to_string())?,
    );
    let text = serde_json::to_vec_pretty(&all).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn traefik_files_are_read_and_other_resolvers_kept() {
        let dir = std::env::temp_dir().join(format!("berth-acme-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acme.json");
        // As Traefik writes it (an RSA account, one certificate), plus another resolver.
        std::fs::write(
            &path,
            r#"{"le":{"Account":{"Email":"a@b.c","Registration":{"body":{"status":"valid"},"uri":"https://ca/acct/1"},"PrivateKey":"MIIB","KeyType":"4096"},
                "Certificates":[{"domain":{"main":"a.test","sans":["b.test"]},"certificate":"Q0VSVA==","key":"S0VZ","Store":"default"}]},
               "other":{"Certificates":[]}}"#,
        )
        .unwrap();
        let r = load(&path, "le").unwrap();
        assert_eq!(r.certificates[0].names(), ["a.test", "b.test"]);
        assert_eq!(r.certificates[0].pems().unwrap(), (b"CERT".to_vec(), b"KEY".to_vec()));
        assert!(
            r.account.as_ref().unwrap().credentials.is_none(),
            "Traefik's account is not ours"
        );
        let mut r2 = r.clone();
        r2.certificates.push(Stored::new(&["c.test".into()], "CHAIN", "K"));
        save(&path, "le", &r2).unwrap();
        assert_eq!(load(&path, "le").unwrap().certificates.len(), 2);
        assert!(read_all(&path).unwrap().contains_key("other"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(load(&dir.join("missing.json"), "le").unwrap().certificates.is_empty());
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path, "le").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
