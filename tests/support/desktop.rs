//! A desktop in miniature for the tray test: a private session bus (`dbus-daemon`, our own
//! child), on it a `org.kde.StatusNotifierWatcher` that also claims to be the host, and a
//! `org.freedesktop.Notifications` server that records what it is asked to show; and readers
//! for a StatusNotifierItem's properties and its `com.canonical.dbusmenu` menu.
//!
//! The bus is private so the test never touches the developer's real desktop, and `cargo test`
//! needs no `dbus-run-session` around it: only the `dbus-daemon` binary (Debian's `dbus`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::zvariant::{OwnedValue, Value};

/// A `dbus-daemon --session` of our own, stopped on drop.
pub struct SessionBus {
    child: Child,
    /// The bus's address, for `DBUS_SESSION_BUS_ADDRESS`.
    pub address: String,
    _dir: tempfile::TempDir,
}

impl SessionBus {
    /// Starts a private session bus listening in a temp folder.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the bus");
        let mut child = Command::new("dbus-daemon")
            .arg("--session")
            .arg("--nofork")
            .arg("--nopidfile")
            .arg("--print-address=1")
            .arg(format!("--address=unix:path={}", dir.path().join("bus").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // It warns when it may not raise its fd limit (containers); nothing to act on.
            .stderr(Stdio::null())
            .spawn()
            .expect("run dbus-daemon (Debian package `dbus`; `cargo xtask test` needs it for the tray test)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("dbus-daemon prints its address");
        let address = line.trim().to_string();
        assert!(!address.is_empty(), "dbus-daemon printed no address");
        Self {
            child,
            address,
            _dir: dir,
        }
    }
}

impl Drop for SessionBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The StatusNotifierWatcher (and host): remembers which items registered.
#[derive(Clone, Default)]
pub struct Watcher {
    pub items: Arc<Mutex<Vec<String>>>,
}

#[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    async fn register_status_notifier_item(&self, service: &str) {
        self.items.lock().unwrap().push(service.to_string());
    }

    async fn register_status_notifier_host(&self, _service: &str) {}

    #[zbus(property)]
    async fn registered_status_notifier_items(&self) -> Vec<String> {
        self.items.lock().unwrap().clone()
    }

    #[zbus(property)]
    async fn is_status_notifier_host_registered(&self) -> bool {
        true
    }

    #[zbus(property)]
    async fn protocol_version(&self) -> i32 {
        0
    }
}

/// A notification server that records (summary, body) of each notification.
#[derive(Clone, Default)]
pub struct Notifications {
    pub shown: Arc<Mutex<Vec<(String, String)>>>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Notifications {
    #[allow(clippy::too_many_arguments)]
    async fn notify(
        &self,
        _app_name: &str,
        _replaces_id: u32,
        _app_icon: &str,
        summary: &str,
        body: &str,
        _actions: Vec<String>,
        _hints: HashMap<String, OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let mut shown = self.shown.lock().unwrap();
        shown.push((summary.to_string(), body.to_string()));
        shown.len() as u32
    }

    async fn get_capabilities(&self) -> Vec<String> {
        vec!["body".into()]
    }

    async fn get_server_information(&self) -> (String, String, String, String) {
        ("easel-test".into(), "easel".into(), "0".into(), "1.2".into())
    }
}

/// The desktop side of the bus: the watcher, the notification server and a connection to call
/// items with.
pub struct Desktop {
    pub connection: zbus::Connection,
    pub watcher: Watcher,
    pub notifications: Notifications,
}

impl Desktop {
    /// Connects to `bus` and serves the watcher and the notification server on it.
    pub async fn serve(bus: &SessionBus) -> Self {
        let watcher = Watcher::default();
        let notifications = Notifications::default();
        let connection = zbus::connection::Builder::address(bus.address.as_str())
            .expect("bus address")
            .name("org.kde.StatusNotifierWatcher")
            .expect("watcher name")
            .name("org.freedesktop.Notifications")
            .expect("notifications name")
            .serve_at("/StatusNotifierWatcher", watcher.clone())
            .expect("serve the watcher")
            .serve_at("/org/freedesktop/Notifications", notifications.clone())
            .expect("serve notifications")
            .build()
            .await
            .expect("connect to the private bus");
        Self {
            connection,
            watcher,
            notifications,
        }
    }

    /// Waits until an item registers; returns its bus name.
    pub async fn wait_for_item(&self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(item) = self.watcher.items.lock().unwrap().first().cloned() {
                return item;
            }
            assert!(
                Instant::now() < deadline,
                "no StatusNotifierItem registered within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An `org.kde.StatusNotifierItem` property of `item`.
    pub async fn item_property(&self, item: &str, name: &str) -> OwnedValue {
        let reply = self
            .connection
            .call_method(
                Some(item),
                "/StatusNotifierItem",
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &("org.kde.StatusNotifierItem", name),
            )
            .await
            .unwrap_or_else(|e| panic!("read {name} of {item}: {e}"));
        reply.body().deserialize::<OwnedValue>().expect("a variant")
    }

    /// The item's `Title`.
    pub async fn title(&self, item: &str) -> String {
        text(&*self.item_property(item, "Title").await)
    }

    /// The item's `Status` (Passive, Active, NeedsAttention).
    pub async fn status(&self, item: &str) -> String {
        text(&*self.item_property(item, "Status").await)
    }

    /// The item's `ToolTip`: (title, description).
    pub async fn tooltip(&self, item: &str) -> (String, String) {
        let value = self.item_property(item, "ToolTip").await;
        let fields = fields(&value);
        assert_eq!(fields.len(), 4, "ToolTip is (sa(iiay)ss): {value:?}");
        (text(&fields[2]), text(&fields[3]))
    }

    /// The item's `IconPixmap`: (width, height, ARGB32 bytes) per size.
    pub async fn icon_pixmaps(&self, item: &str) -> Vec<(i32, i32, Vec<u8>)> {
        let value = self.item_property(item, "IconPixmap").await;
        let Value::Array(pixmaps) = unwrap_variant(&value) else {
            panic!("IconPixmap is a(iiay): {value:?}")
        };
        pixmaps
            .iter()
            .map(|pixmap| {
                let f = fields(pixmap);
                let (Value::I32(w), Value::I32(h), Value::Array(data)) = (&f[0], &f[1], &f[2]) else {
                    panic!("a pixmap is (iiay): {pixmap:?}")
                };
                let bytes = data
                    .iter()
                    .map(|b| match b {
                        Value::U8(b) => *b,
                        other => panic!("pixel bytes: {other:?}"),
                    })
                    .collect();
                (*w, *h, bytes)
            })
            .collect()
    }

    /// The item's whole menu, through `com.canonical.dbusmenu.GetLayout`.
    pub async fn menu(&self, item: &str) -> MenuNode {
        let reply = self
            .connection
            .call_method(
                Some(item),
                "/MenuBar",
                Some("com.canonical.dbusmenu"),
                "GetLayout",
                &(0i32, -1i32, Vec::<String>::new()),
            )
            .await
            .unwrap_or_else(|e| panic!("GetLayout on {item}: {e}"));
        type Layout = (i32, HashMap<String, OwnedValue>, Vec<OwnedValue>);
        let (_revision, (id, props, children)): (u32, Layout) = reply.body().deserialize().expect("u(ia{sv}av)");
        let props = props.iter().map(|(k, v)| (k.clone(), &**v)).collect();
        let children: Vec<&Value<'_>> = children.iter().map(|c| &**c).collect();
        MenuNode::from_parts(id, props, &children)
    }

    /// Clicks the menu item `id` (`com.canonical.dbusmenu.Event(id, "clicked", 0, 0)`).
    pub async fn click(&self, item: &str, id: i32) {
        self.connection
            .call_method(
                Some(item),
                "/MenuBar",
                Some("com.canonical.dbusmenu"),
                "Event",
                &(id, "clicked", Value::I32(0), 0u32),
            )
            .await
            .unwrap_or_else(|e| panic!("click menu item {id} of {item}: {e}"));
    }

    /// What the notification server was asked to show so far.
    pub fn notifications_shown(&self) -> Vec<(String, String)> {
        self.notifications.shown.lock().unwrap().clone()
    }
}

/// One node of a dbusmenu layout.
#[derive(Debug, Clone)]
pub struct MenuNode {
    pub id: i32,
    pub label: String,
    /// dbusmenu's `enabled` (absent means true).
    pub enabled: bool,
    /// `toggle-state`: 1 checked, 0 unchecked, absent for plain items.
    pub toggle_state: Option<i32>,
    pub children: Vec<MenuNode>,
}

impl MenuNode {
    fn from_value(value: &Value<'_>) -> Self {
        let f = fields(value);
        let Value::I32(id) = &f[0] else {
            panic!("a layout node starts with its id: {value:?}")
        };
        let Value::Dict(props) = unwrap_variant(&f[1]) else {
            panic!("a layout node's properties are a{{sv}}: {value:?}")
        };
        let props = props.iter().map(|(key, value)| (text(key), value)).collect();
        let Value::Array(children) = unwrap_variant(&f[2]) else {
            panic!("a layout node's children are av: {value:?}")
        };
        let children: Vec<&Value<'_>> = children.iter().collect();
        Self::from_parts(*id, props, &children)
    }

    fn from_parts(id: i32, props: HashMap<String, &Value<'_>>, children: &[&Value<'_>]) -> Self {
        let label = props.get("label").map(|v| text(v)).unwrap_or_default();
        let enabled = props
            .get("enabled")
            .map(|v| matches!(unwrap_variant(v), Value::Bool(true)))
            .unwrap_or(true);
        let toggle_state = props.get("toggle-state").map(|v| match unwrap_variant(v) {
            Value::I32(state) => *state,
            other => panic!("toggle-state is i: {other:?}"),
        });
        Self {
            id,
            label,
            enabled,
            toggle_state,
            children: children.iter().map(|c| MenuNode::from_value(c)).collect(),
        }
    }

    /// The item labelled `label` (dbusmenu's `__` read as `_`), anywhere below this node.
    pub fn find(&self, label: &str) -> Option<&MenuNode> {
        if self.label.replace("__", "_") == label {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(label))
    }

    /// Every label, top to bottom (for failure messages).
    pub fn labels(&self) -> Vec<String> {
        let mut out = vec![self.label.clone()];
        for child in &self.children {
            out.extend(child.labels());
        }
        out.retain(|l| !l.is_empty());
        out
    }
}

fn unwrap_variant<'a, 'b>(mut value: &'a Value<'b>) -> &'a Value<'b> {
    while let Value::Value(inner) = value {
        value = inner;
    }
    value
}

fn fields<'a, 'b>(value: &'a Value<'b>) -> &'a [Value<'b>] {
    match unwrap_variant(value) {
        Value::Structure(structure) => structure.fields(),
        other => panic!("expected a structure: {other:?}"),
    }
}

fn text(value: &Value<'_>) -> String {
    match unwrap_variant(value) {
        Value::Str(s) => s.to_string(),
        other => panic!("expected a string: {other:?}"),
    }
}
