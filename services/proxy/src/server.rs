//! The proxy's HTTPS listener: the shared one of [`gatehouse_https::server`], each request
//! handed to the [`Pipeline`].

use std::sync::Arc;

pub use gatehouse_https::server::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::pipeline::Pipeline;

/// Accepts connections until `shutdown`, then stops accepting and drains.
pub async fn serve(
    listener: TcpListener,
    options: Options,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
) {
    serve_with(
        listener,
        options,
        move |request, peer| pipeline.clone().handle(request, peer),
        shutdown,
    )
    .await;
}
