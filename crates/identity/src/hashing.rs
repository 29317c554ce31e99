//! Password hashing on a fixed pool of threads, one per core.
//!
//! argon2id needs 19 MiB per hash. On tokio's blocking pool every hash may land on a different
//! thread, and the allocator keeps freed buffers per thread: a burst of logins left a
//! 1.5 GB resident set behind. A fixed pool bounds both the memory (threads × 19 MiB) and the
//! CPU hashing can take from request handling; requests beyond it wait in a queue. Each pool
//! thread keeps its argon2 working memory and reuses it, so hashing allocates nothing.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use std::cell::RefCell;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{self, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version, ARGON2ID_IDENT};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Hashes that may wait per pool thread; beyond that callers are told to come back (503), so
/// a flood of garbage logins cannot build a backlog every real login waits behind.
const QUEUE_PER_THREAD: usize = 32;

/// Why a password could not be hashed or checked.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The pool's queue is full.
    #[error("password hashing is at capacity")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

impl From<HashError> for platform::ApiError {
    fn from(err: HashError) -> Self {
        match err {
            HashError::Busy => platform::ApiError::Unavailable {
                message: "the service is busy; retry shortly".to_owned(),
                retry_after_secs: 1,
            },
            HashError::Failed(reason) => platform::ApiError::Internal(anyhow::anyhow!(reason)),
        }
    }
}

struct Pool {
    jobs: mpsc::SyncSender<Job>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
        let (jobs, queue) = mpsc::sync_channel::<Job>(threads * QUEUE_PER_THREAD);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || loop {
                    let job = match queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    };
                    job();
                });
            if let Err(err) = spawned {
                tracing::error!(error = %err, "cannot start a password-hashing thread");
            }
        }
        Pool { jobs }
    })
}

/// Runs `work` on the hashing pool, unless its queue is full. A job whose caller has gone
/// (a timed-out or closed request) is skipped rather than hashed for nobody.
async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, HashError> {
    let (reply, answer) = oneshot::channel();
    let job: Job = Box::new(move || {
        if !reply.is_closed() {
            let _ = reply.send(work());
        }
    });
    pool().jobs.try_send(job).map_err(|err| match err {
        mpsc::TrySendError::Full(_) => HashError::Busy,
        mpsc::TrySendError::Disconnected(_) => HashError::Failed("the hashing pool is gone".to_owned()),
    })?;
    answer
        .await
        .map_err(|_| HashError::Failed("a hashing job was dropped".to_owned()))
}

/// OWASP's minimum for argon2id: 19 MiB, 2 passes, 1 lane.
fn params() -> Params {
    Params::new(19 * 1024, 2, 1, None).unwrap_or_default()
}

/// The most memory a stored hash may ask for when verified (256 MiB).
const MAX_BLOCKS: usize = 256 * 1024;

thread_local! {
    /// Each pool thread's argon2 working memory, reused across hashes.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

fn compute(argon: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), password_hash::Error> {
    let needed = argon.params().block_count();
    if needed > MAX_BLOCKS {
        return Err(password_hash::Error::ParamValueInvalid(
            password_hash::errors::InvalidValue::TooLong,
        ));
    }
    MEMORY.with(|memory| {
        let mut blocks = memory.borrow_mut();
        if blocks.len() < needed {
            blocks.resize(needed, Block::new());
        }
        argon
            .hash_password_into_with_memory(password, salt, out, &mut blocks[..needed])
            .map_err(Into::into)
    })
}

fn hash_blocking(password: &str) -> Result<String, password_hash::Error> {
    let params = params();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_bytes)?;
    let output = Output::init_with(params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN), |out| {
        compute(&argon, password.as_bytes(), salt_bytes, out)
    })?;
    let phc = PasswordHash {
        algorithm: ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

fn verify_blocking(password: &str, hash: &str) -> Result<bool, password_hash::Error> {
    let parsed = PasswordHash::new(hash)?;
    let algorithm = Algorithm::try_from(parsed.algorithm)?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()?
        .unwrap_or(Version::V0x13);
    let params = Params::try_from(&parsed)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Ok(false);
    };
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
    let argon = Argon2::new(algorithm, version, params);
    let actual = Output::init_with(expected.len(), |out| {
        compute(&argon, password.as_bytes(), salt_bytes, out)
    })?;
    // `Output`'s equality is constant-time.
    Ok(actual == expected)
}

/// The PHC string of `password` (argon2id, m=19 MiB, t=2, p=1, random salt).
pub async fn hash(password: &str) -> Result<String, HashError> {
    let password = password.to_owned();
    run(move || hash_blocking(&password).map_err(|e| HashError::Failed(e.to_string()))).await?
}

/// Whether `password` matches the PHC string `hash` (with the parameters stored in it).
/// An unreadable stored hash matches nothing.
pub async fn verify(password: &str, hash: &str) -> Result<bool, HashError> {
    let password = password.to_owned();
    let hash = hash.to_owned();
    run(move || verify_blocking(&password, &hash).unwrap_or(false)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_carry_the_owasp_parameters() {
        let phc = hash("correct horse battery").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify("correct horse battery", &phc).await.unwrap());
        assert!(!verify("wrong horse battery", &phc).await.unwrap());
        assert!(!verify("anything", "not a phc string").await.unwrap());
        assert_ne!(phc, hash("correct horse battery").await.unwrap(), "salted");
    }

    #[test]
    fn matches_the_reference_implementation_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let reference = Argon2::new(Algorithm::Argon2id, Version::V0x13, params());
        let theirs = reference
            .hash_password(b"s3cret passphrase", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(verify_blocking("s3cret passphrase", &theirs).unwrap());
        let ours = hash_blocking("s3cret passphrase").unwrap();
        assert!(reference
            .verify_password(b"s3cret passphrase", &PasswordHash::new(&ours).unwrap())
            .is_ok());
        assert!(reference
            .verify_password(b"other", &PasswordHash::new(&ours).unwrap())
            .is_err());
    }
}
