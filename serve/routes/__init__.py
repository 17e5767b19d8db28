"""osr-serve's route modules (one per resource, as in fastapi/full-stack-fastapi-template's
backend/app/api/routes/): each builds an APIRouter that serve/app.py ``create_app`` includes."""
