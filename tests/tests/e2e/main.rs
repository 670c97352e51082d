//! End-to-end tests: the real `easeld` on a temp socket with a temp `EASEL_HOME`, driven by the
//! real `easel` CLI and the client library. One test binary (so the heavy dependencies link
//! once), one module per area.

mod activation;
mod bad_input;
mod bundle;
mod cancel;
mod daemon;
mod decoder;
mod events;
mod gateway;
mod generate;
mod grpcio;
mod hub;
mod img2img;
mod inpaint;
mod install;
mod load;
mod memory;
mod python_client;
mod quality;
mod residency;
mod sdxl;
mod store;
mod tray;
