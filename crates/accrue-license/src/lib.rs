//! accrue-license: what a product server links to enforce its accrue
//! license. It activates once (serial + control number), polls the signed
//! definition with `If-None-Match` on a jittered interval (backing off while
//! accrue is down), caches the definition and the JWKS on disk, verifies
//! every definition offline, and answers "is the license active / may this
//! user type log in / is this feature on" from atomics in memory. A cached
//! definition is honoured until its `exp`, never after.
//!
//! A leaf crate: it owns the definition's wire types ([`jws`]); the server
//! imports them, this crate imports nothing of the server.

pub mod jws;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use jws::{verify, Claims, Jwk, Jwks, VerifyError};

/// Default poll interval (the product's "Refresh license definition").
pub const DEFAULT_POLL: Duration = Duration::from_secs(600);
/// First retry after a failed poll; doubles up to the poll interval.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);

/// Unix seconds now; injectable so tests can move time.
pub type NowFn = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct Config {
    /// accrue's base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub serial_number: String,
    pub control_number: String,
    pub server_id: String,
    pub hostname: Option<String>,
    /// Where the definition, JWKS and token are cached.
    pub cache_dir: PathBuf,
    pub poll_interval: Duration,
    pub now: NowFn,
}

impl Config {
    pub fn new(
        url: &str,
        serial: &str,
        control: &str,
        server_id: &str,
        cache_dir: PathBuf,
    ) -> Self {
        Config {
            url: url.trim_end_matches('/').to_string(),
            serial_number: serial.into(),
            control_number: control.into(),
            server_id: server_id.into(),
            hostname: None,
            cache_dir,
            poll_interval: DEFAULT_POLL,
            now: Arc::new(system_now),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("accrue unreachable: {0}")]
    Unreachable(String),
    #[error("accrue answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("cache: {0}")]
    Cache(String),
}

/// What a user of the product may do: the user types of SPEC §7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserType {
    Full,
    Viewer,
    SystemManager,
}

const STATUS_NONE: u8 = 0;
const STATUS_ACTIVE: u8 = 1;
const STATUS_OTHER: u8 = 2;

/// The answers, as atomics: reading them takes a few nanoseconds.
#[derive(Default)]
struct Answers {
    status: AtomicU8,
    exp: AtomicI64,
    full: AtomicU32,
    viewer: AtomicU32,
    data_management: AtomicBool,
}

struct Inner {
    config: Config,
    http: reqwest::blocking::Client,
    answers: Answers,
    current: RwLock<Option<(String, Claims)>>,
    jwks: RwLock<Jwks>,
    token: Mutex<Option<String>>,
    released: AtomicBool,
    stop: AtomicBool,
}

/// A handle to the product server's license; cheap to clone.
#[derive(Clone)]
pub struct License {
    inner: Arc<Inner>,
}

/// What changed in one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    Changed(u64),
    NotModified,
}

impl License {
    /// Loads the disk cache (verified offline) without contacting accrue.
    pub fn open(config: Config) -> Result<License, Error> {
        std::fs::create_dir_all(&config.cache_dir).map_err(|e| Error::Cache(e.to_string()))?;
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        let l = License {
            inner: Arc::new(Inner {
                config,
                http,
                answers: Answers::default(),
                current: RwLock::new(None),
                jwks: RwLock::new(Jwks::default()),
                token: Mutex::new(None),
                released: AtomicBool::new(false),
                stop: AtomicBool::new(false),
            }),
        };
        let dir = &l.inner.config.cache_dir;
        if let Ok(t) = std::fs::read_to_string(dir.join("token")) {
            *l.inner.token.lock().unwrap() = Some(t.trim().to_string());
        }
        if let Ok(j) = std::fs::read(dir.join("jwks.json")) {
            if let Ok(jwks) = serde_json::from_slice::<Jwks>(&j) {
                *l.inner.jwks.write().unwrap() = jwks;
            }
        }
        if let Ok(d) = std::fs::read_to_string(dir.join("definition.jwt")) {
            // A cache that does not verify is ignored, never trusted.
            let _ = l.install(d.trim());
        }
        Ok(l)
    }

    /// Opens the cache, activates if it holds no token, and polls once.
    /// With a valid cached definition, accrue being down is not an error.
    pub fn start(config: Config) -> Result<License, Error> {
        let l = License::open(config)?;
        match l.poll() {
            Ok(_) => Ok(l),
            Err(Error::Unreachable(_)) if l.claims().is_some() => Ok(l),
            Err(e) => Err(e),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.inner.config.url, path)
    }

    fn write_cache(&self, name: &str, body: &str) {
        let dir = &self.inner.config.cache_dir;
        let tmp = dir.join(format!(".{name}.tmp"));
        if std::fs::write(&tmp, body).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(name));
        }
    }

    /// `POST /v1/activations`; keeps the token and the definition.
    pub fn activate(&self) -> Result<String, Error> {
        let c = &self.inner.config;
        let body = serde_json::json!({
            "serial_number": c.serial_number,
            "control_number": c.control_number,
            "server_id": c.server_id,
            "hostname": c.hostname,
        });
        let r = self
            .inner
            .http
            .post(self.url("/v1/activations"))
            .json(&body)
            .send()
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        let status = r.status().as_u16();
        let text = r.text().map_err(|e| Error::Unreachable(e.to_string()))?;
        if status != 200 && status != 201 {
            return Err(Error::Refused { status, body: text });
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::Cache(e.to_string()))?;
        let token = v["token"].as_str().unwrap_or_default().to_string();
        self.write_cache("token", &token);
        *self.inner.token.lock().unwrap() = Some(token.clone());
        self.inner.released.store(false, Relaxed);
        if let Some(d) = v["definition"].as_str() {
            self.accept(d)?;
        }
        Ok(v["activation_id"].as_str().unwrap_or_default().to_string())
    }

    fn refresh_jwks(&self) -> Result<(), Error> {
        let r = self
            .inner
            .http
            .get(self.url("/.well-known/jwks.json"))
            .send()
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        let text = r.text().map_err(|e| Error::Unreachable(e.to_string()))?;
        let jwks: Jwks = serde_json::from_str(&text).map_err(|e| Error::Cache(e.to_string()))?;
        self.write_cache("jwks.json", &text);
        *self.inner.jwks.write().unwrap() = jwks;
        Ok(())
    }

    /// Verifies a definition (fetching the JWKS once if its key is
    /// unknown), installs it and caches it.
    fn accept(&self, jws: &str) -> Result<u64, Error> {
        let known = {
            let kid = jws::header(jws)?.kid;
            self.inner
                .jwks
                .read()
                .unwrap()
                .keys
                .iter()
                .any(|k| k.kid == kid)
        };
        if !known {
            self.refresh_jwks()?;
        }
        let v = self.install(jws)?;
        self.write_cache("definition.jwt", jws);
        Ok(v)
    }

    fn install(&self, jws: &str) -> Result<u64, Error> {
        let claims = verify(jws, &self.inner.jwks.read().unwrap())?;
        let a = &self.inner.answers;
        a.exp.store(claims.exp, Relaxed);
        a.full.store(claims.seats.full, Relaxed);
        a.viewer.store(claims.seats.viewer, Relaxed);
        a.data_management.store(claims.data_management, Relaxed);
        a.status.store(
            if claims.status == "active" {
                STATUS_ACTIVE
            } else {
                STATUS_OTHER
            },
            Relaxed,
        );
        let v = claims.version;
        *self.inner.current.write().unwrap() = Some((jws.to_string(), claims));
        Ok(v)
    }

    /// One poll: activates first if there is no token yet.
    pub fn poll(&self) -> Result<Polled, Error> {
        if self.inner.released.load(Relaxed) {
            return Err(Error::Refused {
                status: 401,
                body: "released".into(),
            });
        }
        let token = self.inner.token.lock().unwrap().clone();
        let Some(token) = token else {
            self.activate()?;
            return Ok(Polled::Changed(self.version().unwrap_or(0)));
        };
        let mut req = self
            .inner
            .http
            .get(self.url("/v1/license"))
            .bearer_auth(&token);
        if let Some(v) = self.version() {
            req = req.header("If-None-Match", format!("\"{v}\""));
        }
        let r = req.send().map_err(|e| Error::Unreachable(e.to_string()))?;
        match r.status().as_u16() {
            304 => Ok(Polled::NotModified),
            200 => {
                let body = r.text().map_err(|e| Error::Unreachable(e.to_string()))?;
                Ok(Polled::Changed(self.accept(body.trim())?))
            }
            401 => {
                // Released (by itself, an admin, a reset or inactivity): keep
                // the last definition until its exp, never re-activate alone.
                self.inner.released.store(true, Relaxed);
                Err(Error::Refused {
                    status: 401,
                    body: r.text().unwrap_or_default(),
                })
            }
            status => Err(Error::Refused {
                status,
                body: r.text().unwrap_or_default(),
            }),
        }
    }

    /// `PUT /v1/activation/sessions` with a JSON `{"sessions":[…]}` body.
    pub fn report_sessions(&self, body: &serde_json::Value) -> Result<u16, Error> {
        let token = self.inner.token.lock().unwrap().clone().unwrap_or_default();
        let r = self
            .inner
            .http
            .put(self.url("/v1/activation/sessions"))
            .bearer_auth(token)
            .json(body)
            .send()
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        Ok(r.status().as_u16())
    }

    /// Polls on the configured interval (±10% jitter) in a thread; after a
    /// failure retries after 5 s, doubling up to the interval. `on_change`
    /// sees every new definition.
    pub fn spawn_poller(
        &self,
        on_change: impl Fn(&Claims) + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let l = self.clone();
        std::thread::spawn(move || {
            let interval = l.inner.config.poll_interval;
            let mut retry = FIRST_RETRY.min(interval);
            while !l.inner.stop.load(Relaxed) {
                let wait = match l.poll() {
                    Ok(p) => {
                        if let (Polled::Changed(_), Some(c)) = (p, l.claims()) {
                            on_change(&c);
                        }
                        retry = FIRST_RETRY.min(interval);
                        jitter(interval)
                    }
                    Err(_) => {
                        let w = retry;
                        retry = (retry * 2).min(interval);
                        jitter(w)
                    }
                };
                sleep_unless_stopped(&l.inner.stop, wait);
            }
        })
    }

    pub fn stop(&self) {
        self.inner.stop.store(true, Relaxed);
    }

    /// The current definition's claims (verified), even if past `exp`.
    pub fn claims(&self) -> Option<Claims> {
        self.inner
            .current
            .read()
            .unwrap()
            .as_ref()
            .map(|(_, c)| c.clone())
    }

    /// The current compact JWS.
    pub fn definition(&self) -> Option<String> {
        self.inner
            .current
            .read()
            .unwrap()
            .as_ref()
            .map(|(j, _)| j.clone())
    }

    pub fn version(&self) -> Option<u64> {
        self.inner
            .current
            .read()
            .unwrap()
            .as_ref()
            .map(|(_, c)| c.version)
    }

    /// Active, and its definition not past `exp`. A few nanoseconds.
    #[inline]
    pub fn is_active(&self) -> bool {
        let a = &self.inner.answers;
        a.status.load(Relaxed) == STATUS_ACTIVE && (self.inner.config.now)() < a.exp.load(Relaxed)
    }

    /// May a user of this type log in? (Seat counts are enforced by accrue
    /// when sessions are reported; here a type without seats is refused.)
    #[inline]
    pub fn may_log_in(&self, user: UserType) -> bool {
        let a = &self.inner.answers;
        self.is_active()
            && match user {
                UserType::Full => a.full.load(Relaxed) > 0,
                UserType::Viewer => a.viewer.load(Relaxed) > 0,
                UserType::SystemManager => true,
            }
    }

    /// Is a feature of the plan on (`data_management`)?
    #[inline]
    pub fn feature(&self, name: &str) -> bool {
        self.is_active()
            && name == "data_management"
            && self.inner.answers.data_management.load(Relaxed)
    }

    /// Whether accrue told this server it is released.
    pub fn is_released(&self) -> bool {
        self.inner.released.load(Relaxed)
    }

    #[doc(hidden)]
    pub fn status_code(&self) -> u8 {
        let s = self.inner.answers.status.load(Relaxed);
        debug_assert!(s <= STATUS_OTHER || s == STATUS_NONE);
        s
    }
}

fn jitter(d: Duration) -> Duration {
    // ±10% from a random u16 (uuid v4 is our randomness source).
    let r = u16::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..2].try_into().unwrap());
    let permille = 900 + u32::from(r % 201);
    d * permille / 1000
}

fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !stop.load(Relaxed) && !left.is_zero() {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}
