//! The error every operation returns: a protocol error code with its message.
//!
//! Operations speak the protocol's codes directly (docs/protocol.md §3) because
//! the codes *are* the contract; `http` only renders them.

use pchat_protocol::ErrorCode;

/// A failed operation, as the client will see it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
    pub retry_after_ms: Option<u64>,
    /// For `wrong_pool`: where the room's pool is served.
    pub location: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: None,
            retry_after_ms: None,
            location: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidRequest, message).with_field(field)
    }

    /// The one answer for a room the caller may not know of (PC-8.3): the same
    /// for a secret room, a disabled room and a room that never existed.
    pub fn room_not_found() -> ApiError {
        ApiError::new(ErrorCode::RoomNotFound, "no such room")
    }

    /// The room is homed in another pool (PC-17.1a).
    pub fn wrong_pool(pool: &str, location: String) -> ApiError {
        let mut e = ApiError::new(
            ErrorCode::WrongPool,
            format!("this room is homed in pool {pool}; ask {location}"),
        );
        e.location = Some(location);
        e
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Forbidden, message)
    }

    pub fn not_found(what: &str, field: &str) -> ApiError {
        ApiError::new(ErrorCode::NotFound, format!("no such {what}")).with_field(field)
    }

    pub fn internal(err: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %err, "internal error");
        ApiError::new(ErrorCode::Internal, "internal error")
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        match e {
            crate::store::StoreError::Closed => {
                let mut err = ApiError::new(ErrorCode::Busy, "the server is shutting down");
                err.retry_after_ms = Some(1000);
                err
            }
            other => ApiError::internal(other),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
