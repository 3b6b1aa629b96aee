// bodyreader reads request bodies as Ollama v0.24.0 does: Go's encoding/json decoding into request structs
// that mirror Ollama's own (api.ChatRequest, api.GenerateRequest, api.EmbedRequest, api.ShowRequest,
// openai.ChatCompletionRequest, anthropic.MessagesRequest), with the standard library only, so the
// differential test builds it offline. Custom-decoded fields of Ollama's (durations, think values, tools)
// are json.RawMessage here: they never fail, so a body is never taken for one Ollama refuses when it does
// not.
//
// Protocol: one request a line on stdin, "<route> <base64 body>"; one JSON answer a line on stdout:
// {"ok": decode succeeded, "model": the model the handler uses, "named": it is not blank (else Ollama
// answers 400 "model is required"), "cloud": Ollama sends it to ollama.com,
// "middleware_model": the model Ollama's cloud middleware reads on /v1 routes (exact key "model", whole
// body), "middleware_ok": it read one, "middleware_cloud": that one goes to ollama.com}.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

type message struct {
	Role       string            `json:"role"`
	Content    string            `json:"content"`
	Thinking   string            `json:"thinking,omitempty"`
	Images     []json.RawMessage `json:"images,omitempty"`
	ToolCalls  []json.RawMessage `json:"tool_calls,omitempty"`
	ToolName   string            `json:"tool_name,omitempty"`
	ToolCallID string            `json:"tool_call_id,omitempty"`
}

type chatRequest struct {
	Model     string          `json:"model"`
	Messages  []message       `json:"messages"`
	Stream    *bool           `json:"stream,omitempty"`
	Format    json.RawMessage `json:"format,omitempty"`
	KeepAlive json.RawMessage `json:"keep_alive,omitempty"`
	Tools     json.RawMessage `json:"tools,omitempty"`
	Options   map[string]any  `json:"options"`
	Think     json.RawMessage `json:"think,omitempty"`
	Truncate  *bool           `json:"truncate,omitempty"`
	Shift     *bool           `json:"shift,omitempty"`
	Debug     bool            `json:"_debug_render_only,omitempty"`
}

type generateRequest struct {
	Model     string            `json:"model"`
	Prompt    string            `json:"prompt"`
	Suffix    string            `json:"suffix"`
	System    string            `json:"system"`
	Template  string            `json:"template"`
	Context   []int             `json:"context,omitempty"`
	Stream    *bool             `json:"stream,omitempty"`
	Raw       bool              `json:"raw,omitempty"`
	Format    json.RawMessage   `json:"format,omitempty"`
	KeepAlive json.RawMessage   `json:"keep_alive,omitempty"`
	Images    []json.RawMessage `json:"images,omitempty"`
	Options   map[string]any    `json:"options"`
	Think     json.RawMessage   `json:"think,omitempty"`
}

type embedRequest struct {
	Model      string          `json:"model"`
	Input      any             `json:"input"`
	KeepAlive  json.RawMessage `json:"keep_alive,omitempty"`
	Truncate   *bool           `json:"truncate,omitempty"`
	Dimensions int             `json:"dimensions,omitempty"`
	Options    map[string]any  `json:"options"`
}

type showRequest struct {
	Model    string         `json:"model"`
	System   string         `json:"system"`
	Template string         `json:"template"`
	Verbose  bool           `json:"verbose"`
	Options  map[string]any `json:"options"`
	Name     string         `json:"name"`
}

type openaiMessage struct {
	Role       string          `json:"role"`
	Content    any             `json:"content"`
	Reasoning  string          `json:"reasoning,omitempty"`
	ToolCalls  json.RawMessage `json:"tool_calls,omitempty"`
	Name       string          `json:"name,omitempty"`
	ToolCallID string          `json:"tool_call_id,omitempty"`
}

type chatCompletionRequest struct {
	Model            string          `json:"model"`
	Messages         []openaiMessage `json:"messages"`
	Stream           bool            `json:"stream"`
	StreamOptions    json.RawMessage `json:"stream_options"`
	MaxTokens        *int            `json:"max_tokens"`
	Seed             *int            `json:"seed"`
	Stop             any             `json:"stop"`
	Temperature      *float64        `json:"temperature"`
	FrequencyPenalty *float64        `json:"frequency_penalty"`
	PresencePenalty  *float64        `json:"presence_penalty"`
	TopP             *float64        `json:"top_p"`
	ResponseFormat   json.RawMessage `json:"response_format"`
	Tools            json.RawMessage `json:"tools"`
	Reasoning        json.RawMessage `json:"reasoning,omitempty"`
	ReasoningEffort  *string         `json:"reasoning_effort,omitempty"`
	Logprobs         *bool           `json:"logprobs"`
	TopLogprobs      int             `json:"top_logprobs"`
	DebugRenderOnly  bool            `json:"_debug_render_only"`
}

type messagesRequest struct {
	Model         string          `json:"model"`
	MaxTokens     int             `json:"max_tokens"`
	Messages      json.RawMessage `json:"messages"`
	System        any             `json:"system,omitempty"`
	Stream        bool            `json:"stream,omitempty"`
	Temperature   *float64        `json:"temperature,omitempty"`
	TopP          *float64        `json:"top_p,omitempty"`
	TopK          *int            `json:"top_k,omitempty"`
	StopSequences []string        `json:"stop_sequences,omitempty"`
	Tools         json.RawMessage `json:"tools,omitempty"`
	ToolChoice    json.RawMessage `json:"tool_choice,omitempty"`
	Thinking      json.RawMessage `json:"thinking,omitempty"`
	Metadata      json.RawMessage `json:"metadata,omitempty"`
	OutputConfig  json.RawMessage `json:"output_config,omitempty"`
}

type answer struct {
	OK              bool   `json:"ok"`
	Model           string `json:"model"`
	Named           bool   `json:"named"`
	Cloud           bool   `json:"cloud"`
	MiddlewareOK    bool   `json:"middleware_ok"`
	MiddlewareModel string `json:"middleware_model"`
	MiddlewareCloud bool   `json:"middleware_cloud"`
}

// isCloud is internal/modelref's ParseRef: the text after the last ':', trimmed and lowercased, is
// "cloud", or (holding no '/') ends in "-cloud".
func isCloud(raw string) bool {
	raw = strings.TrimSpace(raw)
	idx := strings.LastIndex(raw, ":")
	if idx < 0 {
		return false
	}
	suffixRaw := strings.TrimSpace(raw[idx+1:])
	suffix := strings.ToLower(suffixRaw)
	return suffix == "cloud" || (!strings.Contains(suffixRaw, "/") && strings.HasSuffix(suffix, "-cloud"))
}

// decode is gin's ShouldBindJSON (and the OpenAI middlewares'): one json.Decoder value, trailing data
// left unread.
func decode(body []byte, into any) bool {
	return json.NewDecoder(bytes.NewReader(body)).Decode(into) == nil
}

// middlewareModel is server/cloud_proxy.go's extractModelField: the exact key "model" of the whole body.
func middlewareModel(body []byte) (string, bool) {
	var payload map[string]json.RawMessage
	if err := json.Unmarshal(body, &payload); err != nil {
		return "", false
	}
	raw, ok := payload["model"]
	if !ok {
		return "", false
	}
	var model string
	if err := json.Unmarshal(raw, &model); err != nil {
		return "", false
	}
	model = strings.TrimSpace(model)
	return model, model != ""
}

func read(route string, body []byte) (answer, error) {
	var a answer
	switch route {
	case "/api/chat":
		var req chatRequest
		a.OK, a.Model = decode(body, &req), req.Model
	case "/api/generate":
		var req generateRequest
		a.OK, a.Model = decode(body, &req), req.Model
	case "/api/embed":
		var req embedRequest
		a.OK, a.Model = decode(body, &req), req.Model
	case "/api/show":
		var req showRequest
		a.OK = decode(body, &req)
		a.Model = req.Model
		if a.Model == "" {
			a.Model = req.Name
		}
	case "/v1/chat/completions":
		var req chatCompletionRequest
		a.OK, a.Model = decode(body, &req), req.Model
		a.MiddlewareModel, a.MiddlewareOK = middlewareModel(body)
	case "/v1/messages":
		var req messagesRequest
		a.OK, a.Model = decode(body, &req), req.Model
		a.MiddlewareModel, a.MiddlewareOK = middlewareModel(body)
	default:
		return a, fmt.Errorf("no request struct for %q", route)
	}
	return a, nil
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := bufio.NewWriter(os.Stdout)
	for in.Scan() {
		route, encoded, _ := strings.Cut(in.Text(), " ")
		body, err := base64.StdEncoding.DecodeString(encoded)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bodyreader: bad base64:", err)
			os.Exit(2)
		}
		a, err := read(route, body)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bodyreader:", err)
			os.Exit(2)
		}
		a.Named = strings.TrimSpace(a.Model) != "" // else modelref.ErrModelRequired: Ollama answers 400
		a.Cloud, a.MiddlewareCloud = isCloud(a.Model), isCloud(a.MiddlewareModel)
		line, _ := json.Marshal(a)
		out.Write(append(line, '\n'))
		out.Flush()
	}
}
