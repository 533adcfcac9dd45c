//! `blog`: posts with create, read and list routes, JSON in and out.
//!
//! Posts are kept in memory for now; the data-layer issue moves them to the module's
//! own database.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use modhost_plugin_api::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Blog;

#[derive(Debug, Clone, Serialize)]
struct Post {
    id: u64,
    title: String,
    body: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPost {
    title: String,
    #[serde(default)]
    body: String,
}

#[derive(Debug, Deserialize)]
struct Config {
    max_title_len: usize,
}

#[derive(Default)]
struct Posts {
    next_id: u64,
    by_id: BTreeMap<u64, Post>,
}

type Store = Arc<Mutex<Posts>>;

fn lock(store: &Store) -> std::sync::MutexGuard<'_, Posts> {
    store.lock().unwrap_or_else(|p| p.into_inner())
}

impl Module for Blog {
    async fn init(&self, ctx: &mut InitContext) -> Result<()> {
        let config: Config = ctx.config()?;
        let store: Store = Arc::default();

        let s = store.clone();
        ctx.route(
            Method::Get,
            "/api/v1/blog/posts",
            "blog.post.read",
            move |_req| {
                let posts: Vec<Post> = lock(&s).by_id.values().cloned().collect();
                async move { Response::json(200, &posts) }
            },
        )?;

        let s = store.clone();
        ctx.route(
            Method::Get,
            "/api/v1/blog/posts/{id}",
            "blog.post.read",
            move |req| {
                let found = req
                    .param("id")
                    .and_then(|id| id.parse::<u64>().ok())
                    .and_then(|id| lock(&s).by_id.get(&id).cloned());
                async move {
                    match found {
                        Some(post) => Response::json(200, &post),
                        None => Response::error(404, "no such post"),
                    }
                }
            },
        )?;

        let s = store;
        let max = config.max_title_len;
        ctx.route(
            Method::Post,
            "/api/v1/blog/posts",
            "blog.post.create",
            move |req| {
                let s = s.clone();
                async move {
                    let new: NewPost = req.json()?;
                    if new.title.trim().is_empty() || new.title.len() > max {
                        return Err(Response::error(
                            400,
                            format!("title must be 1 to {max} characters"),
                        ));
                    }
                    let mut posts = lock(&s);
                    posts.next_id += 1;
                    let post = Post {
                        id: posts.next_id,
                        title: new.title,
                        body: new.body,
                    };
                    posts.by_id.insert(post.id, post.clone());
                    tracing::info!(id = post.id, "post created");
                    Ok(Response::json(201, &post))
                }
            },
        )?;
        Ok(())
    }
}

modhost_plugin_api::export_module!(Blog);
