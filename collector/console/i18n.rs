//! English and Japanese: the browser's language, or the one picked with the switch (a cookie).

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

const COOKIE: &str = "bannin_lang";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Ja,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ja => "ja",
        }
    }

    fn parse(code: &str) -> Option<Lang> {
        match code {
            "en" => Some(Lang::En),
            "ja" => Some(Lang::Ja),
            _ => None,
        }
    }

    /// The switch's cookie, else the first of the browser's languages that the console speaks
    /// (by the weights the browser gave), else English.
    pub fn of(headers: &HeaderMap) -> Lang {
        if let Some(lang) = super::auth::cookie(headers, COOKIE).and_then(Lang::parse) {
            return lang;
        }
        let Some(accept) = headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
        else {
            return Lang::En;
        };
        let mut best: Option<(f32, Lang)> = None;
        for item in accept.split(',').take(32) {
            let mut parts = item.trim().split(';');
            let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let weight = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let primary = tag.split('-').next().unwrap_or("");
            if let Some(lang) = Lang::parse(primary)
                && best.is_none_or(|(w, _)| weight > w)
            {
                best = Some((weight, lang));
            }
        }
        best.map_or(Lang::En, |(_, lang)| lang)
    }

    /// The text in this language; the English text is the key.
    pub fn tr(self, en: &'static str) -> &'static str {
        if self == Lang::En {
            return en;
        }
        JA.iter()
            .find(|(key, _)| *key == en)
            .map_or(en, |(_, ja)| ja)
    }
}

/// Japanese for every English text the console shows.
const JA: &[(&str, &str)] = &[
    ("Alerts", "アラート"),
    ("Alert", "アラート"),
    ("Agents", "エージェント"),
    ("Timeline", "タイムライン"),
    ("Search", "検索"),
    ("Scope", "影響範囲"),
    ("Rules", "ルール"),
    ("Sign in", "サインイン"),
    ("Sign out", "サインアウト"),
    ("Signed in", "サインインしました"),
    ("Signed out", "サインアウトしました"),
    ("Not signed in", "サインインしていません"),
    ("Sign-in refused", "サインインが拒否されました"),
    (
        "Ask for a sign-in link: bannin-collector console link --operator NAME",
        "サインイン用リンクを発行してもらってください: bannin-collector console link --operator NAME",
    ),
    (
        "This sign-in link is not valid: it was used already, has expired, or its operator was revoked. Ask for a new one.",
        "このサインイン用リンクは無効です(使用済み、期限切れ、またはオペレーターが失効)。新しいリンクを発行してもらってください。",
    ),
    (
        "Refused: the request did not come from the console.",
        "拒否しました: コンソール以外からの要求です。",
    ),
    (
        "You are signed out. A new sign-in needs a new link.",
        "サインアウトしました。再びサインインするには新しいリンクが必要です。",
    ),
    ("Continue", "続ける"),
    ("Signed in as", "サインイン中:"),
    ("Severity", "重大度"),
    ("Rule", "ルール"),
    ("Host", "ホスト"),
    ("User", "ユーザー"),
    ("First seen", "初回"),
    ("Last seen", "最終"),
    ("Count", "件数"),
    ("Deliveries", "通知"),
    ("Summary", "概要"),
    ("Filter", "絞り込み"),
    ("Since", "開始"),
    ("Until", "終了"),
    ("Kind", "種別"),
    ("Path", "パス"),
    ("Time", "時刻"),
    ("Detail", "詳細"),
    ("Lineage", "親プロセス"),
    ("Evidence", "証拠イベント"),
    ("verified", "検証済み"),
    ("not verified", "未検証"),
    ("Fields", "項目"),
    ("Sink", "送信先"),
    ("State", "状態"),
    ("Attempts", "試行"),
    ("Last error", "最後のエラー"),
    ("No deliveries configured.", "通知先は設定されていません。"),
    ("Scope of this alert", "このアラートの影響範囲"),
    (
        "Timeline around this alert",
        "このアラート前後のタイムライン",
    ),
    ("No alerts match.", "該当するアラートはありません。"),
    ("No events match.", "該当するイベントはありません。"),
    ("Name", "名前"),
    ("Status", "状態"),
    ("Enrolled", "登録"),
    ("Sensors", "センサー"),
    ("Backlog", "未送信"),
    ("Dropped", "欠落"),
    ("Overflows", "オーバーフロー"),
    ("Errors", "エラー"),
    ("Chain", "チェーン"),
    ("events", "件"),
    ("active", "稼働中"),
    ("silent", "無応答"),
    ("never_seen", "未接続"),
    ("revoked", "失効"),
    ("intact", "正常"),
    ("head not signed", "先頭未署名"),
    ("Next page", "次のページ"),
    ("Export", "エクスポート"),
    (
        "The scan stopped before the page filled; the next page continues it.",
        "ページが埋まる前に走査を打ち切りました。次のページで続きを検索します。",
    ),
    ("Window", "期間"),
    (
        "Hosts that read sensitive records and then sent data out",
        "機密データを読み出した後に外部へ送信したホスト",
    ),
    ("None", "なし"),
    ("Hosts", "ホスト"),
    ("Rows read", "読み出し行数"),
    ("Tables", "テーブル"),
    ("Public connections after the read", "読み出し後の外部接続"),
    ("Bytes sent after the read", "読み出し後の送信量"),
    ("Files created", "作成ファイル"),
    ("Files deleted", "削除ファイル"),
    ("Database reads", "データベース読み出し"),
    ("Reader", "読み出し元"),
    ("Database", "データベース"),
    ("Rows", "行数"),
    ("Export files", "エクスポートファイル"),
    ("Size", "サイズ"),
    ("Est. rows", "推定行数"),
    ("Personal data", "個人情報"),
    ("Outbound connections", "外部接続"),
    ("Destination", "接続先"),
    ("Sent", "送信量"),
    ("Processes", "プロセス"),
    ("Command", "コマンド"),
    ("What it did", "行為"),
    ("Show", "表示"),
    ("Margin", "前後の幅"),
    ("Loaded rules", "読み込み済みルール"),
    ("Title", "名称"),
    ("Type", "種類"),
    ("Raises alerts", "アラート発報"),
    ("yes", "はい"),
    ("no", "いいえ"),
    ("Thresholds", "しきい値"),
    ("Allow-list", "許可リスト"),
    ("Disabled rules", "無効化されたルール"),
    ("De-duplication window", "重複抑止の期間"),
    ("Export accounts", "エクスポート許可アカウント"),
    ("Applies to", "対象"),
    ("every rule", "全ルール"),
    ("Not found", "見つかりません"),
    ("Error", "エラー"),
    ("Bad request", "不正な要求"),
    ("Process", "プロセス"),
    (
        "more events than shown; narrow the range",
        "表示しきれないイベントがあります。期間を絞ってください",
    ),
    ("Agent", "エージェント"),
    ("Seq", "番号"),
    ("Proof", "検証"),
    ("agent start, sensors", "起動時のセンサー"),
];

#[derive(Deserialize)]
pub struct Back {
    back: Option<String>,
}

/// Only a path on this site: `/x`, never `//host` or `/\host`, which browsers read as another site.
pub fn local_path(back: Option<&str>) -> &str {
    match back {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.starts_with("/\\")
                && !path.chars().any(|c| c.is_control()) =>
        {
            path
        }
        _ => "/alerts",
    }
}

/// `GET /lang/{en|ja}?back=/path`: remembers the choice in a cookie and returns to the page.
pub async fn switch(Path(code): Path<String>, Query(back): Query<Back>) -> Response {
    let Some(lang) = Lang::parse(&code) else {
        return (StatusCode::NOT_FOUND, "no such language").into_response();
    };
    let to = local_path(back.back.as_deref()).to_string();
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!(
                    "{COOKIE}={}; Path=/; Max-Age=31536000; Secure; SameSite=Strict",
                    lang.code()
                ),
            ),
            (header::LOCATION, to),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Lang {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_LANGUAGE, value.parse().unwrap());
        Lang::of(&headers)
    }

    #[test]
    fn picks_the_browsers_language_by_weight() {
        assert_eq!(accept("ja-JP,ja;q=0.9,en;q=0.8"), Lang::Ja);
        assert_eq!(accept("en-US,en;q=0.9,ja;q=0.5"), Lang::En);
        assert_eq!(accept("fr;q=1, ja;q=0.4, en;q=0.3"), Lang::Ja);
        assert_eq!(accept("de"), Lang::En);
        assert_eq!(Lang::of(&HeaderMap::new()), Lang::En);
    }

    #[test]
    fn the_switch_returns_only_to_a_local_page() {
        assert_eq!(local_path(Some("/agents?x=1")), "/agents?x=1");
        for hostile in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example",
            "/a\r\nSet-Cookie: x",
        ] {
            assert_eq!(local_path(Some(hostile)), "/alerts", "{hostile:?}");
        }
    }

    #[test]
    fn every_key_has_one_translation() {
        let mut keys: Vec<&str> = JA.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        let before = keys.len();
        keys.dedup();
        assert_eq!(before, keys.len(), "a key appears twice");
        assert_eq!(Lang::Ja.tr("Alerts"), "アラート");
        assert_eq!(Lang::En.tr("Alerts"), "Alerts");
    }
}
