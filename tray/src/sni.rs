//! The D-Bus face: a `ksni::Tray` (StatusNotifierItem + `com.canonical.dbusmenu`) that only
//! copies the state machine's [`View`].
//!
//! A click sends the item's [`Action`] down a channel to the app, which does it off the D-Bus
//! task; the tray itself never decides anything.

use tokio::sync::mpsc;

use crate::icon;
use crate::state::{Action, IconStatus, MenuEntry, View};

/// The tray as the desktop sees it.
#[derive(Debug)]
pub struct EaselTray {
    pub view: View,
    actions: mpsc::UnboundedSender<Action>,
}

impl EaselTray {
    pub fn new(view: View, actions: mpsc::UnboundedSender<Action>) -> Self {
        Self { view, actions }
    }
}

impl ksni::Tray for EaselTray {
    fn id(&self) -> String {
        "easel-tray".into()
    }

    fn category(&self) -> ksni::Category {
        ksni::Category::ApplicationStatus
    }

    fn title(&self) -> String {
        self.view.title.clone()
    }

    fn status(&self) -> ksni::Status {
        match self.view.status {
            IconStatus::Passive => ksni::Status::Passive,
            IconStatus::Active => ksni::Status::Active,
            IconStatus::NeedsAttention => ksni::Status::NeedsAttention,
        }
    }

    fn icon_pixmap(&self) -> Vec<ksni::Icon> {
        icon::SIZES
            .iter()
            .map(|&size| {
                let pixmap = icon::draw(self.view.icon, size);
                ksni::Icon {
                    width: size as i32,
                    height: size as i32,
                    data: pixmap.to_argb32(),
                }
            })
            .collect()
    }

    fn tool_tip(&self) -> ksni::ToolTip {
        ksni::ToolTip {
            title: self.view.tooltip_title.clone(),
            description: self.view.tooltip_body.clone(),
            ..Default::default()
        }
    }

    fn menu(&self) -> Vec<ksni::MenuItem<Self>> {
        use ksni::menu::{CheckmarkItem, StandardItem};
        self.view
            .menu
            .iter()
            .map(|entry| match entry {
                MenuEntry::Separator => ksni::MenuItem::Separator,
                MenuEntry::Item(item) => {
                    // dbusmenu reads `_` as an access-key marker; a model name keeps its own.
                    let label = item.label.replace('_', "__");
                    let action = item.action.clone();
                    let activate: Box<dyn Fn(&mut Self) + Send> = Box::new(move |tray: &mut Self| {
                        if let Some(action) = &action {
                            // The app is gone only while quitting; nothing to do then.
                            let _ = tray.actions.send(action.clone());
                        }
                    });
                    match item.checked {
                        Some(checked) => CheckmarkItem {
                            label,
                            enabled: item.enabled,
                            checked,
                            activate,
                            ..Default::default()
                        }
                        .into(),
                        None => StandardItem {
                            label,
                            enabled: item.enabled,
                            activate,
                            ..Default::default()
                        }
                        .into(),
                    }
                }
            })
            .collect()
    }

    fn watcher_offline(&self, reason: ksni::OfflineReason) -> bool {
        // Keep running: the icon comes back when a tray host (re)starts.
        tracing::warn!("no StatusNotifierWatcher (is a tray host running?): {reason:?}");
        true
    }
}

#[cfg(test)]
mod tests {
    use ksni::Tray;

    use super::*;
    use crate::state::{Input, TrayState, labels};
    use easel_client::pb;

    fn tray_with(state: &TrayState) -> (EaselTray, mpsc::UnboundedReceiver<Action>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (EaselTray::new(state.view(), tx), rx)
    }

    #[test]
    fn the_face_copies_the_view_and_clicks_send_actions() {
        let mut state = TrayState::new(true);
        state.apply(Input::Connected {
            status: pb::StatusReply {
                version: "0.1.0".into(),
                device: "cpu".into(),
                ..Default::default()
            },
            running: pb::ListRunningReply {
                models: vec![pb::RunningModel {
                    name: "my_model".into(),
                    memory_bytes: 2048,
                    ..Default::default()
                }],
                ..Default::default()
            },
        });
        let (mut tray, mut clicks) = tray_with(&state);
        assert_eq!(tray.title(), "easel: idle");
        assert!(matches!(tray.status(), ksni::Status::Active));
        assert_eq!(tray.tool_tip().title, "easel: idle");
        let icons = tray.icon_pixmap();
        assert_eq!(icons.len(), icon::SIZES.len());
        for icon in &icons {
            assert_eq!(icon.data.len(), (icon.width * icon.height * 4) as usize);
        }

        let menu = tray.menu();
        let label = |item: &ksni::MenuItem<EaselTray>| match item {
            ksni::MenuItem::Standard(i) => Some(i.label.clone()),
            ksni::MenuItem::Checkmark(i) => Some(i.label.clone()),
            _ => None,
        };
        let labels: Vec<String> = menu.iter().filter_map(label).collect();
        assert!(labels.contains(&"my__model: 2.0 KiB".to_string()), "{labels:?}");
        let autostart = menu
            .iter()
            .find_map(|item| match item {
                ksni::MenuItem::Checkmark(i) if i.label == labels::AUTOSTART => Some(i),
                _ => None,
            })
            .expect("Start at login is a checkmark");
        assert!(autostart.checked);
        (autostart.activate)(&mut tray);
        assert_eq!(clicks.try_recv().unwrap(), Action::SetAutostart(false));

        let stop = menu
            .iter()
            .find_map(|item| match item {
                ksni::MenuItem::Standard(i) if i.label == labels::STOP => Some(i),
                _ => None,
            })
            .unwrap();
        (stop.activate)(&mut tray);
        assert_eq!(clicks.try_recv().unwrap(), Action::StopDaemon);
        assert!(menu.iter().any(|item| matches!(item, ksni::MenuItem::Separator)));
    }

    #[test]
    fn status_lines_do_nothing_when_clicked() {
        let state = TrayState::new(false);
        let (mut tray, mut clicks) = tray_with(&state);
        assert!(matches!(tray.status(), ksni::Status::Passive));
        let menu = tray.menu();
        let ksni::MenuItem::Standard(first) = &menu[0] else {
            panic!("a status line first")
        };
        assert!(!first.enabled);
        (first.activate)(&mut tray);
        assert!(clicks.try_recv().is_err());
    }
}
