//! Waiting on a condition with a deadline: tests never sleep a fixed time.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`
/// with `what` and the last `Err` message `check` gave.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting until {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_success() {
        let mut calls = 0;
        let got = eventually("third call", Duration::from_secs(30), || {
            calls += 1;
            let n = calls;
            async move {
                if n >= 3 {
                    Ok(n)
                } else {
                    Err(format!("call {n}"))
                }
            }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting until never; last: nope")]
    async fn panics_with_the_last_error() {
        eventually("never", Duration::from_millis(0), || async {
            Err::<(), _>("nope".to_string())
        })
        .await;
    }
}
