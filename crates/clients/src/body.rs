//! Reading an answer's body with a byte cap: a declared `Content-Length` over the cap is refused
//! before a byte is read, and an undeclared (chunked) body is read chunk by chunk and dropped as
//! soon as it passes the cap. An API (or something posing as one) cannot make a client buffer
//! an unbounded answer.

/// The cap of a JSON answer of TG, Dataverse or Graph: far above any page they send.
pub const MAX_ANSWER_BYTES: u64 = 32 << 20;

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the cap (declared, or read so far).
    #[error("the answer is larger than {limit} bytes{}", declared.map(|n| format!(" ({n} declared)")).unwrap_or_default())]
    TooLarge {
        /// The cap.
        limit: u64,
        /// The declared `Content-Length`, when there was one.
        declared: Option<u64>,
    },
    /// The connection failed while reading.
    #[error("reading the answer: {0}")]
    Read(reqwest::Error),
}

/// The body of `response`, at most `limit` bytes.
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Vec<u8>, BodyError> {
    let declared = response.content_length();
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit, declared });
    }
    let capacity = declared.unwrap_or(0).min(limit);
    let mut body = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Read(e.without_url()))?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(BodyError::TooLarge { limit, declared });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
