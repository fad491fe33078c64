//! Compare-and-swap with retries: every read-modify-write of the store goes through
//! [`retry_on_conflict`], which runs one attempt (read, decide, write with
//! [`Expect`](super::Expect)) again while another writer got there first.

use std::future::Future;

use super::StoreError;

/// How many times a read-modify-write is tried before it reports contention.
pub const CAS_ATTEMPTS: usize = 16;

/// An error that may be a lost compare-and-swap (try again) rather than a failure.
pub trait MaybeConflict {
    fn is_conflict(&self) -> bool;
}

impl MaybeConflict for StoreError {
    fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

/// Runs `attempt` until it succeeds or fails with anything but a conflict, at most
/// [`CAS_ATTEMPTS`] times. `Ok(None)`: every attempt lost to another writer.
pub async fn retry_on_conflict<T, E, F, Fut>(mut attempt: F) -> Result<Option<T>, E>
where
    E: MaybeConflict,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    for _ in 0..CAS_ATTEMPTS {
        match attempt().await {
            Ok(value) => return Ok(Some(value)),
            Err(error) if error.is_conflict() => {}
            Err(error) => return Err(error),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Expect;

    fn conflict() -> StoreError {
        StoreError::Conflict { key: "k".into(), expected: Expect::Absent, found: Some(1) }
    }

    #[tokio::test]
    async fn conflicts_are_retried_other_errors_are_not() {
        let mut calls = 0;
        let result = retry_on_conflict(|| {
            calls += 1;
            let outcome = if calls < 3 { Err(conflict()) } else { Ok(calls) };
            async move { outcome }
        })
        .await;
        assert_eq!(result.ok(), Some(Some(3)));
        let mut calls = 0;
        let result: Result<Option<()>, StoreError> = retry_on_conflict(|| {
            calls += 1;
            async { Err(StoreError::LeaseNotFound(7)) }
        })
        .await;
        assert!(matches!(result, Err(StoreError::LeaseNotFound(7))) && calls == 1);
        let mut calls = 0;
        let result: Result<Option<()>, StoreError> = retry_on_conflict(|| {
            calls += 1;
            async { Err(conflict()) }
        })
        .await;
        assert!(matches!(result, Ok(None)) && calls == CAS_ATTEMPTS, "contended: {calls} attempts");
    }
}
