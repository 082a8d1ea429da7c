//! Slack: SKELETON — replaced by the Slack helper.
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::channel::{ChannelError, HoldView, Posted, VoteSink};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Channel id to post holds in (`C0123…`).
    pub channel: String,
    /// File holding the bot token (`xoxb-…`).
    pub bot_token_file: PathBuf,
    /// File holding the app's signing secret.
    pub signing_secret_file: PathBuf,
    /// Web API base; default `https://slack.com/api/`.
    #[serde(default)]
    pub api_url: Option<String>,
    /// Reactions that approve; default `white_check_mark`.
    #[serde(default)]
    pub approve_reactions: Option<Vec<String>>,
    /// Reactions that deny; default `x`.
    #[serde(default)]
    pub deny_reactions: Option<Vec<String>>,
}

pub struct SlackChannel {}

impl SlackChannel {
    pub fn new(_config: &SlackConfig) -> Result<Self, String> {
        Err("slack is not built yet".into())
    }
    pub async fn post(&self, _view: &HoldView) -> Result<Posted, ChannelError> {
        Err(ChannelError::new("slack", "not built"))
    }
    pub async fn update(&self, _posted: &Posted, _view: &HoldView) -> Result<(), ChannelError> {
        Err(ChannelError::new("slack", "not built"))
    }
    pub async fn announce(&self, _posted: &Posted, _view: &HoldView) -> Result<(), ChannelError> {
        Err(ChannelError::new("slack", "not built"))
    }
}

pub fn routes(_channel: Arc<SlackChannel>, _votes: Arc<dyn VoteSink>) -> axum::Router {
    axum::Router::new()
}
