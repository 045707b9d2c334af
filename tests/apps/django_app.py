"""A single-file Django project for the framework tests (tests/test_frameworks.py).

settings.configure(...), the URLconf and the views all live here; importing
the module configures Django once and exposes `application`. DOWNLOAD["path"]
is the file /file/ sends (set by the test before it asks for it).
"""
import hashlib
import tempfile

import django
from django.conf import settings

UPLOAD_TMP = tempfile.mkdtemp(prefix="yimmo-django-")
DOWNLOAD = {"path": None}

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="yimmo-test-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        APPEND_SLASH=True,
        USE_TZ=True,
        DATABASES={},
        # Uploads past 256 KiB go to a temporary file, not memory.
        FILE_UPLOAD_MAX_MEMORY_SIZE=256 * 1024,
        DATA_UPLOAD_MAX_MEMORY_SIZE=8 * 1024 * 1024,
        FILE_UPLOAD_TEMP_DIR=UPLOAD_TMP,
        LOGGING_CONFIG=None,
    )
    django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402  (needs settings)
from django.http import (FileResponse, HttpResponse, HttpResponseNotAllowed,  # noqa: E402
                         JsonResponse, StreamingHttpResponse)
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


def index(request):
    return HttpResponse("hello from django", content_type="text/plain")


def user(request, name):
    return HttpResponse("user %s" % name, content_type="text/plain")


def item(request, item_id):
    return JsonResponse({"id": item_id, "double": item_id * 2, "q": request.GET.get("q")})


def where(request):
    return JsonResponse({"script_name": request.META["SCRIPT_NAME"], "path": request.path,
                         "path_info": request.path_info,
                         "absolute": request.build_absolute_uri()})


@csrf_exempt
def json_echo(request):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    import json
    data = json.loads(request.body)
    return JsonResponse({"received": data, "keys": sorted(data)}, status=201)


@csrf_exempt
def form(request):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    return JsonResponse({"fields": {k: request.POST.getlist(k) for k in request.POST},
                         "content_type": request.content_type})


@csrf_exempt
def upload(request):
    files = {}
    for field, f in request.FILES.items():
        h = hashlib.sha256()
        size = 0
        for part in f.chunks():
            h.update(part)
            size += len(part)
        files[field] = {"filename": f.name, "size": size, "sha256": h.hexdigest(),
                        "content_type": f.content_type,
                        "on_disk": hasattr(f, "temporary_file_path")}
    return JsonResponse({"files": files, "fields": request.POST.dict()})


def stream(request):
    count = int(request.GET.get("n", 5))
    return StreamingHttpResponse(("line %d\n" % i for i in range(count)),
                                 content_type="text/plain")


def file(request):
    return FileResponse(open(DOWNLOAD["path"], "rb"), as_attachment=True,
                        filename="blob.bin", content_type="application/octet-stream")


def set_cookies(request):
    resp = HttpResponse("cookies set", content_type="text/plain")
    resp.set_cookie("session", "abc123", httponly=True)
    resp.set_cookie("theme", "dark", max_age=3600)
    resp.set_cookie("lang", "en", path="/")
    return resp


def get_cookies(request):
    return JsonResponse(dict(request.COOKIES))


def boom(request):
    raise RuntimeError("django view failed")


urlpatterns = [
    path("", index),
    path("user/<str:name>/", user),
    path("items/<int:item_id>/", item),
    path("where/", where),
    path("json/", json_echo),
    path("form/", form),
    path("upload/", upload),
    path("stream/", stream),
    path("file/", file),
    path("cookies/set/", set_cookies),
    path("cookies/get/", get_cookies),
    path("boom/", boom),
]

application = get_wsgi_application()
