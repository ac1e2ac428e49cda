//! Portability shims: the same core runs on a multi-threaded tokio runtime
//! (native server, Lambda) and inside a single-threaded JS isolate
//! (Cloudflare Workers), where futures backed by JS objects are `!Send`.
//!
//! On native targets the aliases below demand `Send` (so the server can
//! spawn the futures on any worker thread); on `wasm32` they do not (so the
//! Worker adapter can implement the ports with JS-backed futures). Ports are
//! declared with [`port`](crate::port) which applies the matching flavour of
//! `async_trait`.

use std::future::Future;
use std::pin::Pin;

use futures_core::Stream;

/// `Send + Sync` on native targets, nothing on `wasm32`.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSendSync: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync + ?Sized> MaybeSendSync for T {}

/// `Send + Sync` on native targets, nothing on `wasm32`.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSendSync {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSendSync for T {}

/// `Send` on native targets, nothing on `wasm32`.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + ?Sized> MaybeSend for T {}

/// `Send` on native targets, nothing on `wasm32`.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSend for T {}

/// A boxed future that is `Send` exactly where the platform needs it.
#[cfg(not(target_arch = "wasm32"))]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A boxed future that is `Send` exactly where the platform needs it.
#[cfg(target_arch = "wasm32")]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A boxed stream that is `Send` exactly where the platform needs it.
#[cfg(not(target_arch = "wasm32"))]
pub type BoxStream<'a, T> = Pin<Box<dyn Stream<Item = T> + Send + 'a>>;
/// A boxed stream that is `Send` exactly where the platform needs it.
#[cfg(target_arch = "wasm32")]
pub type BoxStream<'a, T> = Pin<Box<dyn Stream<Item = T> + 'a>>;

/// Declares or implements a port trait with the `async_trait` flavour the
/// target needs: `Send` futures on native, `?Send` on `wasm32`.
///
/// ```ignore
/// conduit::port! {
///     impl KeyStore for MyStore { async fn find_by_hash(...) ... }
/// }
/// ```
#[macro_export]
macro_rules! port {
    ($($item:tt)*) => {
        #[cfg_attr(target_arch = "wasm32", $crate::__async_trait::async_trait(?Send))]
        #[cfg_attr(not(target_arch = "wasm32"), $crate::__async_trait::async_trait)]
        $($item)*
    };
}
