//! The macOS face: a menu-bar item (AppKit through `tray-icon`, on `tao`'s event loop) that,
//! as the D-Bus face does on Linux, only copies the state machine's [`View`].
//!
//! AppKit wants the event loop and the item on the main thread, so the main loop
//! (`main_loop::drive`) runs on a tokio runtime beside it and sends each new view over the event
//! loop's proxy; a click comes back the other way as the item's [`Action`]. The menu is rebuilt
//! from the view each time (its items' ids are mapped to their actions then). Notifications
//! go through `osascript`'s `display notification`, which every macOS has.
//!
//! Built and checked for macOS targets only (`cargo check --target x86_64-apple-darwin -p
//! easel-tray`); the logic it shows is the state machine's, tested on every platform.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tao::event::{Event, StartCause};
use tao::event_loop::{ControlFlow, EventLoopBuilder};
use tao::platform::macos::{ActivationPolicy, EventLoopExtMacOS};
use tokio::sync::mpsc;
use tray_icon::menu::{CheckMenuItem, Menu, MenuEvent, MenuId, MenuItem, PredefinedMenuItem};
use tray_icon::{Icon, TrayIcon, TrayIconBuilder};

use crate::actions::{self, Settings};
use crate::icon;
use crate::state::{Action, MenuEntry, Notification, TrayState, View};

/// What reaches the event loop on the main thread.
#[derive(Debug)]
enum ToMenuBar {
    Show(View),
    Clicked(MenuId),
    Quit,
}

/// The menu-bar icon's size in pixels (AppKit scales it to the bar's height).
const ICON_SIZE: u32 = 32;

/// Runs the tray: the event loop on this thread (the main one), the main loop on `runtime`.
/// Quit, SIGINT and SIGTERM end the process.
pub fn run(settings: Settings, runtime: tokio::runtime::Runtime) -> ! {
    let mut event_loop = EventLoopBuilder::<ToMenuBar>::with_user_event().build();
    // A menu-bar item only: no Dock icon, no app menu.
    event_loop.set_activation_policy(ActivationPolicy::Accessory);
    let proxy = event_loop.create_proxy();

    let settings = Arc::new(settings);
    let (action_tx, clicks) = mpsc::unbounded_channel();
    let state = TrayState::new(actions::autostart_enabled(settings.autostart_file.as_deref()));
    let mut pending = Some(state.view());
    let to_menu_bar = Mutex::new(proxy.clone());
    let show = move |view| {
        let sent = to_menu_bar
            .lock()
            .map(|proxy| proxy.send_event(ToMenuBar::Show(view)).is_ok());
        if !matches!(sent, Ok(true)) {
            tracing::debug!("the menu bar is gone; a view was dropped");
        }
        std::future::ready(())
    };
    let quit = proxy.clone();
    runtime.spawn(async move {
        if let Err(error) = crate::main_loop::drive(settings, state, clicks, show, notify).await {
            tracing::error!("cannot listen for termination signals: {error}");
        }
        let _ = quit.send_event(ToMenuBar::Quit);
    });
    // The handler may be called from any thread AppKit likes: hand the click to the loop.
    let clicked = Mutex::new(proxy);
    MenuEvent::set_event_handler(Some(move |event: MenuEvent| {
        if let Ok(proxy) = clicked.lock() {
            let _ = proxy.send_event(ToMenuBar::Clicked(event.id));
        }
    }));

    let mut item: Option<TrayIcon> = None;
    let mut actions_by_id: HashMap<MenuId, Action> = HashMap::new();
    event_loop.run(move |event, _, control_flow| {
        *control_flow = ControlFlow::Wait;
        match event {
            // tray-icon's rule on macOS: create the item once the loop runs, not before.
            Event::NewEvents(StartCause::Init) => match TrayIconBuilder::new().with_menu_on_left_click(true).build() {
                Ok(built) => {
                    if let Some(view) = pending.take() {
                        show_view(&built, &view, &mut actions_by_id);
                    }
                    item = Some(built);
                }
                Err(error) => {
                    eprintln!("easel-tray: error: cannot put the icon in the menu bar: {error}");
                    *control_flow = ControlFlow::ExitWithCode(1);
                }
            },
            Event::UserEvent(ToMenuBar::Show(view)) => match &item {
                Some(built) => show_view(built, &view, &mut actions_by_id),
                None => pending = Some(view),
            },
            Event::UserEvent(ToMenuBar::Clicked(id)) => {
                if let Some(action) = actions_by_id.get(&id) {
                    let _ = action_tx.send(action.clone());
                }
            }
            Event::UserEvent(ToMenuBar::Quit) => {
                item.take();
                *control_flow = ControlFlow::ExitWithCode(0);
            }
            _ => {}
        }
    })
}

/// Copies `view` onto the item: menu (rebuilt; `actions` maps its items' ids), tooltip, the
/// progress as the item's title while a job runs, and the icon.
fn show_view(item: &TrayIcon, view: &View, actions: &mut HashMap<MenuId, Action>) {
    let menu = Menu::new();
    actions.clear();
    for entry in &view.menu {
        let appended = match entry {
            MenuEntry::Separator => menu.append(&PredefinedMenuItem::separator()),
            MenuEntry::Item(entry) => match entry.checked {
                Some(checked) => {
                    let check = CheckMenuItem::new(&entry.label, entry.enabled, checked, None);
                    if let Some(action) = &entry.action {
                        actions.insert(check.id().clone(), action.clone());
                    }
                    menu.append(&check)
                }
                None => {
                    let plain = MenuItem::new(&entry.label, entry.enabled, None);
                    if let Some(action) = &entry.action {
                        actions.insert(plain.id().clone(), action.clone());
                    }
                    menu.append(&plain)
                }
            },
        };
        if let Err(error) = appended {
            tracing::warn!("a menu item could not be added: {error}");
        }
    }
    item.set_menu(Some(Box::new(menu)));
    let tooltip = format!("{}\n{}", view.tooltip_title, view.tooltip_body);
    if let Err(error) = item.set_tooltip(Some(tooltip.trim_end())) {
        tracing::warn!("the tooltip could not be set: {error}");
    }
    item.set_title(
        view.icon
            .progress_tenths
            .map(|tenths| format!("{}%", u32::from(tenths) * 10)),
    );
    let pixmap = icon::draw(view.icon, ICON_SIZE);
    match Icon::from_rgba(pixmap.rgba, ICON_SIZE, ICON_SIZE) {
        Ok(picture) => {
            if let Err(error) = item.set_icon(Some(picture)) {
                tracing::warn!("the icon could not be set: {error}");
            }
        }
        Err(error) => tracing::warn!("the icon could not be made: {error}"),
    }
}

/// Shows `note` in the Notification Center.
async fn notify(note: Notification) {
    let script = actions::applescript_notification(&note);
    let shown = tokio::process::Command::new("/usr/bin/osascript")
        .args(["-e", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    if !shown.is_ok_and(|status| status.success()) {
        tracing::warn!("a notification could not be shown: {}", note.summary);
    }
}
